-- 011: a writer may opt out of the NOTIFY for its transaction, and wake
-- the relay later with <table>_wake(); the trigger notifies a few times per
-- transaction at most.
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
-- The trigger fires for each row, as 008's, and its WHEN reads the flag
-- alone, so that it costs writers nothing while no relay sleeps: measured
-- with 8 writers of 1,000 single-row INSERTs per transaction, in turns with
-- a plain table, a WHEN that also read the settings below cost 5-10% (its
-- expression is set up for every statement), a trigger once per statement
-- over a transition table 3%, this one nothing measurable. While a relay
-- sleeps, the function reads the settings: <table>.notify first (off: it
-- sends nothing), then <table>.notified, in which it counts the rows of
-- the transaction that reached it and lists the partitions it notified. A
-- row of a partition already notified sends nothing more; after 16 rows
-- the function sends one empty payload (every relay of the table wakes)
-- and ends at once for every later row. 008's function ran a query and a
-- NOTIFY for every row while a relay slept, which made a 20,000-row
-- INSERT ... SELECT take 0.66-1.08 s instead of 0.22-0.26 s. A setting
-- made with set_config(..., true) ends with the transaction, and rolling
-- back to a savepoint restores it, as it drops the notifications sent
-- since: the two never disagree.

drop trigger {{.Local "notify"}} on {{.Table}};

create or replace function {{.Name "notify"}}() returns trigger
    language plpgsql as {{.Q}}
declare
    seen text := coalesce(nullif(current_setting({{.NotifiedSettingLiteral}}, true), ''), '0:,');
    p    integer;
    rows integer;
    done text;
    part text;
begin
    if seen = 'all'
       or lower(coalesce(current_setting({{.NotifySettingLiteral}}, true), '')) in ('off', 'false', 'no', '0') then
        return null;
    end if;
    p := coalesce((select partitions from {{.Name "settings"}}), 1);
    rows := split_part(seen, ':', 1)::integer + 1;
    done := split_part(seen, ':', 2);
    part := {{.Name "partition"}}(new.partition_key, new.id, p)::text;
    if position(',' || part || ',' in done) = 0 then
        perform pg_notify(tg_argv[0], part);
        done := done || part || ',';
    end if;
    if p = 1 or rows >= 16 then
        if p > 1 then
            perform pg_notify(tg_argv[0], '');
        end if;
        perform set_config({{.NotifiedSettingLiteral}}, 'all', true);
    else
        perform set_config({{.NotifiedSettingLiteral}}, rows || ':' || done, true);
    end if;
    return null;
end;
{{.Q}};

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    for each row
    when (pg_sequence_last_value({{.NameLiteral "relay_waiting"}}::regclass) = 1)
    execute function {{.Name "notify"}}({{.ChannelLiteral}});

create function {{.Name "wake"}}() returns void
    language sql volatile
begin atomic
    select pg_notify({{.ChannelLiteral}}, '');
end;
