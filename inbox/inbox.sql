-- The consumers' inbox: run against the consumer's own database.
--
-- This file is a template: outbox-relay fills in the quoted names derived
-- from the inbox table's name (OUTBOX_INBOX_TABLE, default inbox).
-- `outbox-relay inbox migrate -print` shows it rendered, ready for psql or
-- your own migration tool. Every statement is idempotent: running it again,
-- or from several processes at once under the advisory lock that
-- `inbox migrate` takes, changes nothing.

create table if not exists {{.Table}} (
    consumer    text        not null,
    message_id  uuid        not null,
    received_at timestamptz not null default now(),
    primary key (consumer, message_id)
);

-- Pruning deletes the oldest claims first, a batch at a time.
create index if not exists {{.Index}} on {{.Table}} (received_at);

-- Call it inside the transaction that does the work, before the work:
--
--     select {{.Claim}}('billing', '0b6c...'::uuid);
--
-- true: the first time this consumer sees this message_id; do the work and
-- commit. false: a duplicate; do nothing (commit or roll back, then ack).
-- A rollback undoes the claim, so a redelivery is processed again.
--
-- Under READ COMMITTED, a second transaction claiming the same id waits for
-- the first: false if it commits, true if it rolls back. Under REPEATABLE
-- READ or SERIALIZABLE it fails with SQLSTATE 40001 instead: retry the
-- whole transaction.
--
-- PL/pgSQL, not SQL, so that its plan is cached per session.
create or replace function {{.Claim}}(consumer text, message_id uuid)
    returns boolean
    language plpgsql volatile
as {{.Q}}
begin
    if consumer is null or message_id is null then
        raise exception 'inbox claim: consumer and message_id must not be null (consumer %, message_id %)',
            coalesce(quote_literal(consumer), 'null'), coalesce(message_id::text, 'null')
            using errcode = 'null_value_not_allowed',
                  hint = 'pass the consumer''s name and the message''s AMQP message-id';
    end if;
    -- $1 and $2: the parameters' names are also the columns' names.
    insert into {{.Table}} (consumer, message_id)
        values ($1, $2)
        on conflict do nothing;
    return found;
end;
{{.Q}};
