-- 008: a NOTIFY names the row's partition, so that it wakes the relay that
-- owns it and not every relay of the table.
--
-- The trigger fires for each row rather than once per statement, while the
-- wake-up flag is up (WHEN reads it for each row: a function call, no
-- query), and sends the row's partition as the payload. PostgreSQL folds
-- the notifications of one transaction with the same payload into one, so
-- a transaction that inserts many rows sends one per partition it touched.
-- A relay asleep on LISTEN ignores the payloads of partitions it does not
-- own; an empty payload (`dead retry`, a trigger from before this
-- migration) wakes every relay, as before. While the flag is down, writers
-- pay nothing more than before.

create or replace function {{.Name "notify"}}() returns trigger
    language plpgsql as {{.Q}}
begin
    perform pg_notify(tg_argv[0], {{.Name "partition"}}(new.partition_key, new.id,
        coalesce((select partitions from {{.Name "settings"}}), 1))::text);
    return null;
end;
{{.Q}};

drop trigger {{.Local "notify"}} on {{.Table}};

create trigger {{.Local "notify"}}
    after insert on {{.Table}}
    for each row
    when (pg_sequence_last_value({{.NameLiteral "relay_waiting"}}::regclass) = 1)
    execute function {{.Name "notify"}}({{.ChannelLiteral}});
