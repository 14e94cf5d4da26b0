-- One step attempt begins: steps-started.sql for a single start, with
-- scalar parameters. Most dispatch rounds start one step, and with arrays the
-- planner's guess for their length (10) makes every run of the statement
-- plan anew; with scalars the statement keeps its generic plan (it is
-- prepared, see sql.ts) and planning is paid once per connection.
-- The same locking, numbering (and the same retry on the primary key) as
-- steps-started.sql: the build's row is locked before the step's row is
-- produced, since `locked` is what the insert reads.
-- $1 build, $2 drvpath, $3 system, $4 machine, $5 starttime, $6 first step of
-- its build (NOTIFY build_started), $7 busy, $8 type, $9/$10 output names/paths.
with locked as materialized (
  select id from builds where id = $1 for no key update
), step as (
  insert into buildsteps (
    build, stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime,
    machine, system, propagatedfrom, overhead, timesbuilt, isnondeterministic,
    resolveddrvpath
  )
  select l.id, coalesce((select max(b.stepnr) from buildsteps b where b.build = $1), 0) + 1, $8::integer, $2::text, $7::integer,
         null::integer, null::text, $5::integer, null::integer, $4::text, $3::text, null::integer, null::integer, null::integer,
         null::boolean, null::text
  from locked l
  returning build, stepnr
), outputs as (
  insert into buildstepoutputs (build, stepnr, name, path)
  select step.build, step.stepnr, o.name, o.path
  from step cross join unnest($9::text[], $10::text[]) as o(name, path)
), notes as (
  select 1 as k, 'step_started' as channel, step.build || E'\t' || step.stepnr as payload from step
  union all
  select 2, 'build_started', step.build::text from step where $6::boolean
)
-- pg_notify is volatile, so it runs after the sort, in the notes' order.
select array(select id from locked) as found,
       array(select stepnr from step) as stepnrs,
       (select count(*) from (select pg_notify(n.channel, n.payload) from notes as n order by n.k) as sent)::integer as notified
