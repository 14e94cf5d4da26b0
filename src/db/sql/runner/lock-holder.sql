-- The backend (pid) holding the queue-runner lock (try-lock.sql) in this
-- database, or no row when it is free; the lock is not taken. A standby
-- watches this; a runner re-taking its lock uses it to tell its own dead
-- session (still holding the lock until its backend notices) from another
-- runner. A bigint advisory key appears in pg_locks as classid = its high 32
-- bits, objid = its low 32 bits, objsubid = 1.
with k as (select hashtext('hydrant:queue-runner')::bigint as key)
select l.pid
from pg_locks l, k
where l.locktype = 'advisory'
  and l.granted
  and l.database = (select oid from pg_database where datname = current_database())
  and l.objsubid = 1
  and l.classid::bigint = (k.key >> 32) & 4294967295
  and l.objid::bigint = k.key & 4294967295
