-- 011: a writer may opt out of the NOTIFY for its transaction, and wake
-- the relay later with <table>_wake().
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

drop trigger {{.Local "notify"}} on {{.Table}};

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    for each row
    when (pg_sequence_last_value({{.NameLiteral "relay_waiting"}}::regclass) = 1
          and lower(coalesce(current_setting({{.NotifySettingLiteral}}, true), '')) not in ('off', 'false', 'no', '0'))
    execute function {{.Name "notify"}}({{.ChannelLiteral}});

create function {{.Name "wake"}}() returns void
    language sql volatile
begin atomic
    select pg_notify({{.ChannelLiteral}}, '');
end;
