-- 001: the outbox table, its indexes, the enqueue functions and the wake-up trigger.
--
-- This file is a template: outbox-relay fills in the quoted names derived from
-- OUTBOX_TABLE. `outbox-relay migrate -print` shows it rendered for your table,
-- ready for psql or your own migration tool.

create table {{.Table}} (
    id            bigint generated always as identity primary key,
    exchange      text        not null default '',
    routing_key   text        not null,
    partition_key text,
    message_id    uuid        not null default gen_random_uuid(),
    content_type  text,
    headers       jsonb,
    payload       bytea       not null,
    created_at    timestamptz not null default now(),
    available_at  timestamptz not null default now(),
    attempts      int         not null default 0,
    last_error    text,
    dead_at       timestamptz,
    constraint {{.Local "routing_key_set"}} check (routing_key <> ''),
    constraint {{.Local "headers_object"}} check (headers is null or jsonb_typeof(headers) = 'object')
);

-- The claim takes the available rows with the lowest ids from two indexes,
-- so that its cost follows the batch, not the table. Rows written with the
-- default available_at (= created_at) are available at once: claim_idx
-- holds them in id order. Rows delayed by their writer or backing off after
-- a failure have another available_at: delayed_idx holds them by when they
-- come due, so a million of them scheduled for later cost the claim nothing.
-- Dead rows are in neither.
create index {{.Local "claim_idx"}} on {{.Table}} (id)
    where dead_at is null and available_at = created_at;
create index {{.Local "delayed_idx"}} on {{.Table}} (available_at, id)
    where dead_at is null and available_at <> created_at;

-- Per-key order: "is an earlier row of this key backing off (or delayed)?"
-- Only rows of delayed_idx can be, so this index holds just those: the
-- probe the claim makes for each keyed row finds nothing, at once, unless
-- a row of that key really waits.
create index {{.Local "partition_idx"}} on {{.Table}} (partition_key, id)
    where dead_at is null and available_at <> created_at and partition_key is not null;

-- Dead rows, for `outbox-relay dead` and the dead-rows gauge.
create index {{.Local "dead_idx"}} on {{.Table}} (id) where dead_at is not null;

-- Wake-up. The relay sets `waiting` while it sleeps on LISTEN; the insert
-- trigger notifies only then, so writers do not pay for a NOTIFY (which
-- serialises the commits of all notifying transactions) while the relay is
-- busy anyway. Unlogged: after a crash it is empty, which reads as "not
-- waiting", and the relay writes it again before it sleeps.
create unlogged table {{.Name "relay_state"}} (
    singleton  boolean     primary key default true check (singleton),
    waiting    boolean     not null default false,
    updated_at timestamptz not null default now()
);

-- PL/pgSQL, not SQL: its plan is cached per session. A SQL function is
-- planned at every call, which cost 32 concurrent writers a quarter of their
-- commit rate.
create function {{.Name "relay_waiting"}}() returns boolean
    language plpgsql stable parallel safe as {{.Q}}
begin
    return exists (select 1 from {{.Name "relay_state"}} where waiting);
end;
{{.Q}};

create function {{.Name "notify"}}() returns trigger
    language plpgsql as {{.Q}}
begin
    perform pg_notify(tg_argv[0], '');
    return null;
end;
{{.Q}};

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    for each statement
    when ({{.Name "relay_waiting"}}())
    execute function {{.Name "notify"}}({{.ChannelLiteral}});

-- Enqueue from any language: select outbox_enqueue('jobs', 'job.completed', '{"id": 1}');
-- Returns the row's message_id. The bytea form is the base; the text and jsonb
-- forms set a matching content_type unless one is given.
create function {{.Name "enqueue"}}(
    exchange      text,
    routing_key   text,
    payload       bytea,
    headers       jsonb default null,
    partition_key text  default null,
    content_type  text  default null
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type)
    values (coalesce($1, ''), $2, $3, $4, $5, $6)
    returning message_id;
end;

create function {{.Name "enqueue"}}(
    exchange      text,
    routing_key   text,
    payload       text,
    headers       jsonb default null,
    partition_key text  default null,
    content_type  text  default 'text/plain; charset=utf-8'
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type)
    values (coalesce($1, ''), $2, convert_to($3, 'UTF8'), $4, $5, $6)
    returning message_id;
end;

create function {{.Name "enqueue"}}(
    exchange      text,
    routing_key   text,
    payload       jsonb,
    headers       jsonb default null,
    partition_key text  default null,
    content_type  text  default 'application/json'
) returns uuid
    language sql volatile
begin atomic
    insert into {{.Table}} (exchange, routing_key, payload, headers, partition_key, content_type)
    values (coalesce($1, ''), $2, convert_to($3::text, 'UTF8'), $4, $5, $6)
    returning message_id;
end;
