-- After the runner re-took its lock (database outage): a busy row that is not
-- one of its running attempts ($2/$3: build, stepnr pairs) belongs to no one,
-- e.g. a start whose commit succeeded but whose reply was lost and which was
-- then written again. It becomes aborted (3), as at startup.
update buildsteps s
set busy = 0,
    status = 3,
    stoptime = $1,
    errormsg = coalesce(errormsg, 'runner lost its database connection')
where s.busy != 0
  and not exists (
    select 1 from unnest($2::int[], $3::int[]) as k(build, stepnr)
    where k.build = s.build and k.stepnr = s.stepnr
  )
