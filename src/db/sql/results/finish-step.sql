-- The attempt ended: the row stops being busy and records how it went.
-- Content-addressed outputs are only known once built: their paths are
-- filled (or added) in the same statement. Returns the row if it was there.
with step as (
  update buildsteps
  set busy = 0,
      status = $3,
      errormsg = $4,
      starttime = $5,
      stoptime = $6,
      machine = $7,
      overhead = $8,
      timesbuilt = $9,
      isnondeterministic = $10,
      resolveddrvpath = $11
  where build = $1 and stepnr = $2
  returning build, stepnr
), outputs as (
  insert into buildstepoutputs (build, stepnr, name, path)
  select step.build, step.stepnr, o.name, o.path
  from step, unnest($12::text[], $13::text[]) as o(name, path)
  on conflict (build, stepnr, name) do update set path = excluded.path
)
select build from step
