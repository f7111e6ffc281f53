-- 010: validate 009's check. Every row already satisfies it (001's check
-- was stricter), so VALIDATE only confirms it, scanning the table under a
-- SHARE UPDATE EXCLUSIVE lock that lets writers and the relay go on.

alter table {{.Table}} validate constraint {{.Local "routable"}};
