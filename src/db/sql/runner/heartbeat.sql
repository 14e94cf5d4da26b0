-- The lock connection's heartbeat: a round trip proves the session (and with
-- it the lock) is still there.
select 1
