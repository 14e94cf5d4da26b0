-- Every output already exists, so the build succeeds without running. Same
-- exactly-once guard as a built success. Its status is the earlier build's
-- (0, or 6 failed with output; Hydra's markSucceededBuild with res.failed).
-- Size, closure size and release name are only overwritten when the caller
-- knows them.
update builds
set finished = 1,
    buildstatus = $6,
    starttime = $2,
    stoptime = $2,
    iscachedbuild = 1,
    notificationpendingsince = $2,
    size = coalesce($3, size),
    closuresize = coalesce($4, closuresize),
    releasename = coalesce($5, releasename)
where id = $1 and finished = 0
returning id
