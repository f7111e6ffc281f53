-- 005: AMQP message properties as columns, and outbox_enqueue arguments for
-- them, for available_at and for message_id.
--
-- Consumers built on common frameworks read the AMQP properties, not
-- headers: type (the event name), correlation_id and reply_to
-- (request/reply, sagas), expiration (a per-message TTL), priority,
-- content_encoding and app_id. Each gets a nullable column named after it;
-- null sends nothing, as before. The relay sends them from the version of
-- the relay that knows this migration on; an older relay would drop them,
-- so relays are upgraded before the table (see the README).
--
-- expiration is an interval counted from created_at: the relay sends what
-- remains of it, in milliseconds, and parks a row whose time ran out before
-- it was published as dead, with last_error and the failure reason
-- `expired`. It must be positive. priority is 0-255 (an AMQP octet; queues
-- honour at most their x-max-priority). The text properties are AMQP short
-- strings: at most 255 bytes.
--
-- Online on a busy table: a nullable column without a default is a change
-- of the catalogue only (no rewrite, no scan), and the checks are added NOT
-- VALID, so the ACCESS EXCLUSIVE lock is held for a moment. Every existing
-- row has these columns null, which every check accepts; migration 006, a
-- later transaction, validates them under a lock that lets writers go on.
-- Dead rows are exempt, as in 003. Constraint names stay short enough for
-- the longest table name OUTBOX_TABLE allows.

alter table {{.Table}}
    add column type             text,
    add column correlation_id   text,
    add column reply_to         text,
    add column expiration       interval,
    add column priority         smallint,
    add column content_encoding text,
    add column app_id           text,
    add constraint {{.Local "type_size"}}
        check (dead_at is not null or octet_length(type) <= 255) not valid,
    add constraint {{.Local "corr_id_size"}}
        check (dead_at is not null or octet_length(correlation_id) <= 255) not valid,
    add constraint {{.Local "reply_to_size"}}
        check (dead_at is not null or octet_length(reply_to) <= 255) not valid,
    add constraint {{.Local "encoding_size"}}
        check (dead_at is not null or octet_length(content_encoding) <= 255) not valid,
    add constraint {{.Local "app_id_size"}}
        check (dead_at is not null or octet_length(app_id) <= 255) not valid,
    add constraint {{.Local "expiration_range"}}
        check (dead_at is not null or (expiration > interval '0'
                                      and expiration <= interval '4294967295 milliseconds')) not valid,
    add constraint {{.Local "priority_range"}}
        check (dead_at is not null or priority between 0 and 255) not valid;

comment on constraint {{.Local "type_size"}} on {{.Table}}
    is 'type longer than 255 bytes';
comment on constraint {{.Local "corr_id_size"}} on {{.Table}}
    is 'correlation_id longer than 255 bytes';
comment on constraint {{.Local "reply_to_size"}} on {{.Table}}
    is 'reply_to longer than 255 bytes';
comment on constraint {{.Local "encoding_size"}} on {{.Table}}
    is 'content_encoding longer than 255 bytes';
comment on constraint {{.Local "app_id_size"}} on {{.Table}}
    is 'app_id longer than 255 bytes';
comment on constraint {{.Local "expiration_range"}} on {{.Table}}
    is 'expiration not positive, or over 4294967295 milliseconds (about 49.7 days): RabbitMQ refuses a longer TTL';
comment on constraint {{.Local "priority_range"}} on {{.Table}}
    is 'priority outside 0-255';

-- A relay reads the table's schema version before it starts, and refuses
-- one newer than it knows (it would drop the columns it does not know).
-- The versions and names of the migrations are no secret: every role may
-- read them, the relay's included.
grant select on {{.Name "schema_migrations"}} to public;

-- The enqueue functions take every column a writer may set, as named
-- arguments with defaults, so calls written for 001 (positional or named)
-- keep working:
--   select outbox_enqueue(exchange => 'jobs', routing_key => 'job.completed',
--       payload => '{"id": 7}'::jsonb, type => 'job.completed',
--       correlation_id => 'req-42', expiration => '30 seconds', priority => 5);
-- available_at null is now; message_id null is a random one. A function
-- cannot gain parameters in place (CREATE OR REPLACE would add an overload,
-- and every old call would become ambiguous), so the three are dropped and
-- created again in this transaction: writers see the old ones or the new.
-- EXECUTE is granted to PUBLIC again by default; re-apply any narrower
-- grants you made on them.

drop function {{.Name "enqueue"}}(text, text, bytea, jsonb, text, text);
drop function {{.Name "enqueue"}}(text, text, text, jsonb, text, text);
drop function {{.Name "enqueue"}}(text, text, jsonb, jsonb, text, text);

create function {{.Name "enqueue"}}(
    exchange         text,
    routing_key      text,
    payload          bytea,
    headers          jsonb       default null,
    partition_key    text        default null,
    content_type     text        default null,
    type             text        default null,
    correlation_id   text        default null,
    reply_to         text        default null,
    expiration       interval    default null,
    priority         int         default null,
    content_encoding text        default null,
    app_id           text        default null,
    available_at     timestamptz default null,
    message_id       uuid        default null
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type,
                            type, correlation_id, reply_to, expiration, priority, content_encoding,
                            app_id, available_at, message_id)
    values (coalesce($1, ''), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
            coalesce($14, now()), coalesce($15, gen_random_uuid()))
    returning message_id;
end;

create function {{.Name "enqueue"}}(
    exchange         text,
    routing_key      text,
    payload          text,
    headers          jsonb       default null,
    partition_key    text        default null,
    content_type     text        default 'text/plain; charset=utf-8',
    type             text        default null,
    correlation_id   text        default null,
    reply_to         text        default null,
    expiration       interval    default null,
    priority         int         default null,
    content_encoding text        default null,
    app_id           text        default null,
    available_at     timestamptz default null,
    message_id       uuid        default null
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type,
                            type, correlation_id, reply_to, expiration, priority, content_encoding,
                            app_id, available_at, message_id)
    values (coalesce($1, ''), $2, convert_to($3, 'UTF8'), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
            coalesce($14, now()), coalesce($15, gen_random_uuid()))
    returning message_id;
end;

create function {{.Name "enqueue"}}(
    exchange         text,
    routing_key      text,
    payload          jsonb,
    headers          jsonb       default null,
    partition_key    text        default null,
    content_type     text        default 'application/json',
    type             text        default null,
    correlation_id   text        default null,
    reply_to         text        default null,
    expiration       interval    default null,
    priority         int         default null,
    content_encoding text        default null,
    app_id           text        default null,
    available_at     timestamptz default null,
    message_id       uuid        default null
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type,
                            type, correlation_id, reply_to, expiration, priority, content_encoding,
                            app_id, available_at, message_id)
    values (coalesce($1, ''), $2, convert_to($3::text, 'UTF8'), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
            coalesce($14, now()), coalesce($15, gen_random_uuid()))
    returning message_id;
end;
