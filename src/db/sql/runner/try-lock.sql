-- One queue runner per database: a session-level advisory lock, released
-- by PostgreSQL when the holding connection ends (crash included).
select pg_try_advisory_lock(hashtext('hydrant:queue-runner')) as locked
