-- 003: refuse at insert what AMQP cannot carry, and partition keys too long
-- for their index.
--
-- AMQP carries the exchange, the routing key and the content type as short
-- strings of at most 255 bytes (bytes, not characters: 'é' counts two). A
-- row over a limit could never be published: the client library refuses to
-- encode it and drops the broker connection, so the relay took it for a
-- broker outage and sent the same batch again and again. The relay now
-- parks such rows without sending them; these checks refuse them at insert,
-- where the writer learns of the mistake. The error names the constraint,
-- e.g. outbox_routing_key_size. (Named _size, not _length: it counts bytes,
-- and a longer suffix would not fit PostgreSQL's 63-byte names beside the
-- longest table name OUTBOX_TABLE allows.)
--
-- partition_key is not sent, but a row that backs off enters partition_idx
-- (partition_key, id), and a btree entry holds at most 2704 bytes: a key of
-- about 2.7 KB that does not compress made the relay's UPDATE of a failed
-- row fail, which rolled back the whole batch's settle, so its good rows
-- were published again and again. 1024 bytes is plenty for an aggregate id
-- and fits an index entry even on 4 KB pages. The check is called
-- <table>_partkey_size: <table>_partition_key_size would be 64 bytes long
-- beside a 45-byte table name, which PostgreSQL would cut short.
--
-- Dead rows are exempt, so that rows already in the table that break a limit
-- can be parked (migration 004) rather than deleted, and stay visible to
-- `outbox-relay dead list`. `dead retry` skips such a row and says why, with
-- the constraint's comment below: fix the row, or purge it.
--
-- Online on a busy table: adding a check takes the table's ACCESS EXCLUSIVE
-- lock, held here only for the moment it takes to record the constraints.
-- NOT VALID skips the scan of existing rows; from now on every insert and
-- update is checked. Migration 004, a later transaction, parks the rows
-- that break a limit and then validates the constraints under a lock that
-- lets writers and the relay go on.

alter table {{.Table}}
    add constraint {{.Local "exchange_size"}}
        check (dead_at is not null or octet_length(exchange) <= 255) not valid,
    add constraint {{.Local "routing_key_size"}}
        check (dead_at is not null or octet_length(routing_key) <= 255) not valid,
    add constraint {{.Local "content_type_size"}}
        check (dead_at is not null or octet_length(content_type) <= 255) not valid,
    add constraint {{.Local "partkey_size"}}
        check (dead_at is not null or partition_key is null or octet_length(partition_key) <= 1024) not valid;

-- What a row that breaks the check has wrong, in words: `dead retry` says
-- it of the rows it skips.
comment on constraint {{.Local "exchange_size"}} on {{.Table}}
    is 'exchange longer than 255 bytes';
comment on constraint {{.Local "routing_key_size"}} on {{.Table}}
    is 'routing_key longer than 255 bytes';
comment on constraint {{.Local "content_type_size"}} on {{.Table}}
    is 'content_type longer than 255 bytes';
comment on constraint {{.Local "partkey_size"}} on {{.Table}}
    is 'partition_key longer than 1024 bytes';
