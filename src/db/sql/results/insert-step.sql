-- One BuildSteps row with the next stepnr of its build. max + 1 is safe only
-- because the caller already holds the build's row lock (lock-build.sql) from
-- an earlier statement, whose wait makes this statement's snapshot see every
-- step committed by the previous lock holder. The outputs go in with it.
with step as (
  insert into buildsteps (
    build, stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime,
    machine, system, propagatedfrom, overhead, timesbuilt, isnondeterministic,
    resolveddrvpath
  )
  select $1, coalesce(max(stepnr), 0) + 1, $2, $3, $4, $5, $6, $7, $8,
         $9, $10, $11, $12, $13, $14, $15
  from buildsteps
  where build = $1
  returning build, stepnr
), outputs as (
  insert into buildstepoutputs (build, stepnr, name, path)
  select step.build, step.stepnr, o.name, o.path
  from step
  cross join unnest($16::text[], $17::text[]) as o(name, path)
)
select stepnr from step
