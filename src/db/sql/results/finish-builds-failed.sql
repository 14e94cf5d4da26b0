-- Ends a chunk of builds needing a failed step, each with its own status
-- (the step's for the build whose derivation it is, 2 for the others).
-- "finished = 0" keeps a build that already ended untouched; the returned ids
-- are the builds this call ended.
update builds as b
set finished = 1,
    buildstatus = v.status,
    starttime = $3,
    stoptime = $4,
    iscachedbuild = $5,
    notificationpendingsince = $4
from unnest($1::int[], $2::int[]) as v(id, status)
where b.id = v.id and b.finished = 0
returning b.id
