-- 004: park the rows that break 003's limits, then validate the constraints.
--
-- Rows inserted before 003 were not checked. Those over a limit could never
-- be published (or, for partition_key, never be retried), so they are
-- parked as dead, as the relay would park them, with last_error naming the
-- column and the limit, e.g.
--   routing_key is 300 bytes; AMQP allows 255 (parked by migration 004)
--   partition_key is 3000 bytes; the table allows 1024 (parked by migration 004)
-- Their attempts are left as they were. Rows already dead are left alone.
-- `outbox-relay dead list` shows them; `dead retry` skips them, saying why,
-- until the row is fixed.
--
-- Inserts and updates are checked since 003 committed, so no new row can
-- break a limit while this runs: once the rows found here are parked, the
-- constraints hold for the whole table and VALIDATE only has to confirm it.
-- VALIDATE scans the table under a SHARE UPDATE EXCLUSIVE lock, which lets
-- writers and the relay go on (it waits only for a VACUUM or another
-- migration); the parking update locks just the rows it parks.
--
-- Until this commits, a row over a limit that is still live cannot be
-- updated without being parked: a relay that records a failed attempt of
-- one, or promotes one its writer delayed, fails that settle or claim and
-- retries it. Apply 004 right after 003, as `outbox-relay migrate` does.

update {{.Table}}
   set dead_at = now(),
       last_error = concat_ws('; ',
           nullif(concat_ws('; ',
               case when octet_length(exchange) > 255
                    then format('exchange is %s bytes', octet_length(exchange)) end,
               case when octet_length(routing_key) > 255
                    then format('routing_key is %s bytes', octet_length(routing_key)) end,
               case when octet_length(content_type) > 255
                    then format('content_type is %s bytes', octet_length(content_type)) end),
               '') || '; AMQP allows 255',
           case when octet_length(partition_key) > 1024
                then format('partition_key is %s bytes; the table allows 1024', octet_length(partition_key)) end)
           || ' (parked by migration 004)'
 where dead_at is null
   and (octet_length(exchange) > 255
        or octet_length(routing_key) > 255
        or octet_length(content_type) > 255
        or octet_length(partition_key) > 1024);

alter table {{.Table}}
    validate constraint {{.Local "exchange_size"}},
    validate constraint {{.Local "routing_key_size"}},
    validate constraint {{.Local "content_type_size"}},
    validate constraint {{.Local "partkey_size"}};
