-- 002: a wake-up check that costs writers nothing, and no vacuum truncation.
-- (001 is left as it was released; what changed in how its indexes are used
-- is said here.)
--
-- In 001 the insert trigger asked a PL/pgSQL function, which queried
-- <table>_relay_state, whether the relay sleeps on LISTEN: a query in every
-- writing transaction, which cost 32 concurrent one-row writers about a
-- tenth of their commit rate. The flag is now a sequence: the relay sets it
-- with setval, which every session sees at once and no transaction rolls
-- back, and the trigger's WHEN reads it with pg_sequence_last_value, a
-- plain function call. 1 means a relay sleeps on LISTEN and wants a NOTIFY;
-- 0 or null (never set) means it is busy, or gone, and nobody would listen.
--
-- After a crash the flag keeps its last value. If that was 1, writers send a
-- NOTIFY that wakes nobody until a relay is leader again and sets it.
--
-- pg_sequence_last_value is the function behind the pg_sequences view
-- (PostgreSQL 10 and later), not documented on its own; it needs SELECT on
-- the sequence, granted below. It holds the sequence's one page locked for
-- the moment it reads it: no contention measured with 32 writers on 2 cores.
--
-- How the relay uses 001's indexes now: the claim walks claim_idx alone.
-- When a row of delayed_idx comes due, the relay sets its available_at back
-- to created_at, which moves it into claim_idx; a row waits while an earlier
-- row of its partition_key is still in delayed_idx.

drop trigger {{.Local "notify"}} on {{.Table}};
drop function {{.Name "relay_waiting"}}();
drop table {{.Name "relay_state"}};

create sequence {{.Name "relay_waiting"}} as smallint minvalue 0 maxvalue 1 start 0;
-- Any role that inserts into the table reads the flag in the trigger.
grant select on sequence {{.Name "relay_waiting"}} to public;

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    for each statement
    when (pg_sequence_last_value({{.NameLiteral "relay_waiting"}}::regclass) = 1)
    execute function {{.Name "notify"}}({{.ChannelLiteral}});

-- A queue table empties and fills again all day. When it is empty, VACUUM
-- (autovacuum's or the relay's) would give its pages back to the file system,
-- which takes an ACCESS EXCLUSIVE lock that stops every writer, and a WAL
-- flush; the next inserts need the pages again anyway.
alter table {{.Table}} set (vacuum_truncate = false);
