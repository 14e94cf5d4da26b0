-- A build's step rows (every attempt), in order, with their outputs; at most $2.
select s.stepnr, s.type, s.drvpath, s.busy, s.status, s.errormsg, s.starttime, s.stoptime,
       s.machine, s.system, s.propagatedfrom, s.overhead, s.timesbuilt, s.resolveddrvpath,
       coalesce((select json_agg(json_build_object('name', o.name, 'path', o.path) order by o.name)
                   from buildstepoutputs o where o.build = s.build and o.stepnr = s.stepnr), '[]'::json) as outputs
  from buildsteps s
 where s.build = $1
 order by s.stepnr
 limit $2
