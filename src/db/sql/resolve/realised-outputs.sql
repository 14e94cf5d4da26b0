-- The realised output paths of derivations ($1, full .drv paths) as steps
-- recorded them: the outputs of a succeeded (0) row of the derivation, or of
-- a resolved (13) row (the resolved derivation's known paths), or of a
-- succeeded row of the derivation a resolved row names (resolvedDrvPath is
-- stored without the store directory, $2). Newest step first per output.
select distinct on (drvpath, name) drvpath, name, path
from (
  select s.drvpath, o.name, o.path, s.stoptime
  from buildsteps s
  join buildstepoutputs o on o.build = s.build and o.stepnr = s.stepnr
  where s.drvpath = any($1::text[]) and s.status in (0, 13) and o.path is not null
  union all
  select r.drvpath, o.name, o.path, s.stoptime
  from buildsteps r
  join buildsteps s on s.drvpath = $2 || '/' || r.resolveddrvpath and s.status = 0
  join buildstepoutputs o on o.build = s.build and o.stepnr = s.stepnr
  where r.drvpath = any($1::text[]) and r.status = 13 and o.path is not null
) found
order by drvpath, name, stoptime desc nulls last
