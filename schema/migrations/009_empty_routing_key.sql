-- 009: an empty routing key is valid where it can route.
--
-- Fanout and headers exchanges ignore the routing key, and their clients
-- send '' (python-socketio's KombuManager does); AMQP carries it. 001's
-- check (routing_key <> '') refused such a row, and with it the writer's
-- whole transaction: its business change was rolled back with the event.
-- The new check refuses only what can never route: the default exchange
-- ('') routes by queue name, and no queue is named ''. A named exchange
-- takes any routing key, '' included; whether it routes is the exchange's
-- business (a direct or topic exchange with no binding for '' returns the
-- message, and the relay treats it as any unroutable one).
--
-- Online on a busy table: adding a check takes the table's ACCESS
-- EXCLUSIVE lock, held only for the moment it takes to record the change
-- (`migrate` waits for it at most 2 s at a time, so writers never queue
-- behind it for long). NOT VALID skips the scan: every existing row passed
-- the old, stricter check. Migration 010 validates it in a later
-- transaction, under a lock that lets writers and the relay go on.

alter table {{.Table}}
    add constraint {{.Local "routable"}}
        check (exchange <> '' or routing_key <> '') not valid,
    drop constraint {{.Local "routing_key_set"}};

comment on constraint {{.Local "routable"}} on {{.Table}}
    is 'empty routing_key on the default exchange, which routes by queue name';
