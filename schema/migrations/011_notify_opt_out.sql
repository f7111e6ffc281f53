-- 011: a writer may opt out of the NOTIFY for its transaction, and wake
-- the relay later with <table>_wake(); the trigger fires once per statement again.
--
-- PREPARE TRANSACTION refuses a transaction that executed NOTIFY, and the
-- insert trigger notifies exactly while a relay sleeps on LISTEN: a
-- service using two-phase commit (SQLAlchemy's twophase=True, psycopg's
-- tpc_prepare()) failed at PREPARE whenever the relay was idle. Such a
-- transaction now says
--
--   set local outbox.notify = off;   -- <table>.notify; lasts until its end
--
-- before it enqueues, and after COMMIT PREPARED the writer calls
--
--   select outbox_wake();
--
-- which wakes every relay of the table (an empty payload). SET LOCAL lasts
-- for the transaction only, so it is safe behind a transaction pooler. Any
-- of off, false, no, 0 turns the NOTIFY off. Without the call, the rows are
-- found by the next poll (OUTBOX_POLL_INTERVAL) or the next wake-up. A
-- relay waiting for writers to end before it sleeps (see the README) does
-- not wait for a prepared transaction, which has no session.
--
-- The trigger's WHEN reads the setting after the flag, so writers pay for
-- it only while a relay sleeps: a function call, no query.
--
-- The trigger fires once per statement again, as before 008, and reads the
-- statement's rows from a transition table: 008's trigger fired for each
-- row while the flag was up, which made a 20,000-row INSERT ... SELECT
-- take 0.7-1.1 s instead of 0.22-0.26 s (measured side by side on 2
-- cores); once per statement it takes 0.25 s, flag up or down. It sends
-- one NOTIFY per partition the statement's rows map to, as 008 did per
-- row (PostgreSQL folds equal notifications of a transaction into one).
-- The rows are kept for the trigger whether it fires or not, in memory: a
-- copy per row inserted, which costs a bulk insert no measurable time.

drop trigger {{.Local "notify"}} on {{.Table}};

create or replace function {{.Name "notify"}}() returns trigger
    language plpgsql as {{.Q}}
declare
    p integer := coalesce((select partitions from {{.Name "settings"}}), 1);
begin
    if p = 1 then
        perform pg_notify(tg_argv[0], '0');
    else
        perform pg_notify(tg_argv[0], q.part::text)
           from (select distinct {{.Name "partition"}}(n.partition_key, n.id, p) as part
                   from new_rows n) q;
    end if;
    return null;
end;
{{.Q}};

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    referencing new table as new_rows
    for each statement
    when (pg_sequence_last_value({{.NameLiteral "relay_waiting"}}::regclass) = 1
          and lower(coalesce(current_setting({{.NotifySettingLiteral}}, true), '')) not in ('off', 'false', 'no', '0'))
    execute function {{.Name "notify"}}({{.ChannelLiteral}});

create function {{.Name "wake"}}() returns void
    language sql volatile
begin atomic
    select pg_notify({{.ChannelLiteral}}, '');
end;
