-- 007: partitions, so that several relays can share one table.
--
-- Rows map to P partitions: a row with a partition_key to the partition its
-- key hashes to, so that every row of a key is in one partition and goes out
-- in order through the one relay that owns it; a row without a key to its id
-- modulo P, which spreads them. P is a property of the table, kept in
-- <table>_settings: `outbox-relay migrate` records it from
-- OUTBOX_PARTITIONS, waiting for the claims in flight (see the README's
-- "Scaling out"). A table migrated here keeps one partition, which is one
-- relay leading and the others standing by, as before.
--
-- <table>_partition is the mapping, for the relay's claim and for anyone
-- who wants to know where a key's rows go. hashtextextended is the hash
-- PostgreSQL's own hash partitioning uses: it must not change across
-- versions, or pg_upgrade would break hash-partitioned tables. Nothing
-- writers do changes: the partition is computed when the relay claims.

create table {{.Name "settings"}} (
    one        boolean primary key default true check (one),
    partitions integer not null default 1 check (partitions between 1 and 256)
);
insert into {{.Name "settings"}} default values;
-- Any role that reads the table may read how it is partitioned.
grant select on {{.Name "settings"}} to public;

create function {{.Name "partition"}}(partition_key text, id bigint, partitions integer)
    returns integer
    language sql immutable parallel safe
as {{.Q}}
    select case
        when partitions <= 1 then 0
        when partition_key is null then (id % partitions)::integer
        else ((hashtextextended(partition_key, 0) & 9223372036854775807) % partitions)::integer
    end
{{.Q}};
