-- The demo's builds and how each ended. `machine` is the builder that ran the
-- step of the build's own derivation; that step's row may be recorded under
-- another of these builds (the lowest-id one that needed it).
select b.id, b.job, b.drvpath, b.finished, b.buildstatus, b.iscachedbuild, b.releasename,
       (select s.machine from buildsteps s
         where s.build = any($1::int[]) and s.drvpath = b.drvpath and s.propagatedfrom is null
           and s.machine <> '' and s.busy = 0
         order by s.stoptime desc nulls last, s.stepnr desc
         limit 1) as machine
from builds b
where b.id = any($1::int[])
order by b.id
