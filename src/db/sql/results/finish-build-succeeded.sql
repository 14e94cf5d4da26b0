-- A build ends exactly once: "finished = 0" turns a second finish into a
-- no-op, and the returned row tells the caller whether this call ended it.
-- notificationPendingSince = stopTime makes hydra-notify pick the build up.
update builds
set finished = 1,
    buildstatus = $2,
    starttime = $3,
    stoptime = $4,
    size = $5,
    closuresize = $6,
    releasename = $7,
    iscachedbuild = $8,
    notificationpendingsince = $4
where id = $1 and finished = 0
returning id
