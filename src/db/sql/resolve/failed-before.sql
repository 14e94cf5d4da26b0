-- Whether a resolved derivation ($1, full .drv path) already failed for good:
-- the newest build step of it that ended with a failure a rebuild would
-- repeat (1 failed, 7 timed out, 10 log limit, 11 NAR size limit, 12 not
-- deterministic), with the build it ran under. Its floating outputs have no
-- path, so FailedPaths (keyed by output path) cannot tell. The look-up goes
-- through Hydra's IndexBuildStepsOnDrvPath.
select build, status
from buildsteps
where drvpath = $1 and status in (1, 7, 10, 11, 12) and starttime != 0 and stoptime != 0
order by stoptime desc
limit 1
