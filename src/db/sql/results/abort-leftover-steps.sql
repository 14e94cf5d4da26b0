-- Startup: a step still busy was left by a runner that died mid-step. Aborted
-- (3) is the retryable status, so the scheduler may run the step again.
update buildsteps
set busy = 0,
    status = 3,
    stoptime = $1,
    errormsg = coalesce(errormsg, 'runner restarted')
where busy != 0
