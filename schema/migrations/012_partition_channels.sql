-- 012: each partition has a NOTIFY channel of its own, so that a row's
-- notification reaches the relay owning its partition and no other; and
-- the payload names the writer's transaction.
--
-- Through 011 the trigger sent the partition as the payload on the table's
-- channel, which every relay of the table listens on: each relay's process
-- was woken by every commit, to drop two notifications in three with three
-- relays. Now, with more than one partition, the trigger notifies
-- <channel>/<p> (the table's channel, shortened as needed so that the
-- name fits; Table.PartitionChannel), still with p as the payload, and a
-- relay listens on the channels of the partitions it owns. The table's own
-- channel keeps the rest: the empty payload that wakes every relay (after a
-- transaction's 16th row, <table>_wake(), `dead retry`) and the relays'
-- own announcements. A table with one partition notifies on the table's
-- channel, as before. PostgreSQL (through 17 at least) still signals every
-- listening session of the database at each notifying commit; a session
-- not listening on the channel reads the notification and drops it, and
-- its client is not woken.
--
-- The payload is now the partition, ":" and the writer's transaction id
-- (pg_current_xact_id). A relay compares it with the snapshot xmin of its
-- last claim: a transaction before it had committed when that claim
-- looked, so its rows were taken then, and a notification read after the
-- claim does not make the relay claim again for nothing. With three relays
-- at 1,000 rows/s, four claims in ten came back empty so.
--
-- Relays of this version listen on both, so they work with a table
-- migrated to 011 as well; an older relay refuses a table at 012 (relays
-- first, then `outbox-relay migrate`).

create or replace function {{.Name "notify"}}() returns trigger
    language plpgsql as {{.Q}}
declare
    seen text := coalesce(nullif(current_setting({{.NotifiedSettingLiteral}}, true), ''), '0:,');
    p    integer;
    rows integer;
    done text;
    part text;
    note text;
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
        note := part || ':' || pg_current_xact_id()::text;
        if p = 1 then
            perform pg_notify(tg_argv[0], note);
        else
            perform pg_notify({{.PartitionChannelPrefixLiteral}} || part, note);
        end if;
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
