-- Each build that failed because of another build's step gets a row for that
-- step, pointing at the build it ran under (propagatedFrom), as Hydra's web UI
-- shows it. Times stay null like Hydra's: the time was spent once, under
-- propagatedFrom, and must not be charged again to every dependent's jobset.
-- The caller holds the builds' row locks (lock-builds.sql), so max + 1 per
-- build cannot race.
with steps as (
  insert into buildsteps (
    build, stepnr, type, drvpath, busy, status, errormsg, machine, system, propagatedfrom
  )
  select d.id,
         coalesce((select max(s.stepnr) from buildsteps s where s.build = d.id), 0) + 1,
         0, $2, 0, $3, $4, $5, $6, $7
  from unnest($1::int[]) as d(id)
  returning build, stepnr
)
insert into buildstepoutputs (build, stepnr, name, path)
select steps.build, steps.stepnr, o.name, o.path
from steps
cross join unnest($8::text[], $9::text[]) as o(name, path)
