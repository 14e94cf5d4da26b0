-- A build whose derivation cannot be loaded ends as aborted (3), as Hydra's
-- runner ends a build whose .drv was garbage-collected (same columns), plus
-- notificationPendingSince for the build_finished NOTIFY the caller sends.
-- "finished = 0" makes it happen once; it also takes the row lock that
-- numbers the step row written next (see src/db/step-rows.ts).
update builds
set finished = 1,
    buildstatus = 3,
    starttime = $2,
    stoptime = $2,
    notificationpendingsince = $2
where id = $1 and finished = 0
returning id
