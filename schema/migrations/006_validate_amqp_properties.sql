-- 006: validate 005's checks.
--
-- Every row that existed before 005 has the new columns null, which every
-- check accepts, and every row inserted or updated since was checked: there
-- is nothing to park. VALIDATE scans the table under a SHARE UPDATE
-- EXCLUSIVE lock, which lets writers and the relay go on, so it runs in a
-- transaction of its own rather than under 005's ACCESS EXCLUSIVE lock.

alter table {{.Table}}
    validate constraint {{.Local "type_size"}},
    validate constraint {{.Local "corr_id_size"}},
    validate constraint {{.Local "reply_to_size"}},
    validate constraint {{.Local "encoding_size"}},
    validate constraint {{.Local "app_id_size"}},
    validate constraint {{.Local "expiration_range"}},
    validate constraint {{.Local "priority_range"}};
