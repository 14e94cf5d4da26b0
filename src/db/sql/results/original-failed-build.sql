-- The build under which a cached failure's derivation last failed as a build
-- (status 1, with times), for the cached-failure row's propagatedFrom: first
-- by derivation path, then by output path, then (outputs without a path) by
-- derivation and output name, as Hydra's Rust runner looks it up
-- (crates/db/src/connection.rs get_last_build_step_id,
-- get_last_build_step_id_for_output_path, ..._for_output_with_drv; the C++
-- runner's queue-monitor.cc:187-205 does the first two). Its join of outputs
-- to steps by build alone is Hydra's.
select coalesce(
  (select max(build) from buildsteps
    where drvpath = $1 and starttime != 0 and stoptime != 0 and status = 1),
  (select max(s.build) from buildsteps s join buildstepoutputs o on s.build = o.build
    where s.starttime != 0 and s.stoptime != 0 and s.status = 1 and o.path = any($2::text[])),
  (select max(s.build) from buildsteps s join buildstepoutputs o on s.build = o.build
    where s.starttime != 0 and s.stoptime != 0 and s.status = 1 and s.drvpath = $1 and o.name = any($3::text[]))
) as build
