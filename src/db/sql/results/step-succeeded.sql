-- A built step's whole result in one statement, hence one round trip and its
-- own transaction: the step row and its outputs as finish-step.sql does, each
-- build it ends as finish-build-succeeded.sql does (a build ends once:
-- "finished = 0"), then NOTIFY step_finished (when the row was there) and
-- build_finished (the ended builds, in the order given), in that order.
-- Only for results with a step row, no products or metrics and few enough
-- builds for one build_finished payload: the others go through the
-- multi-statement transaction (scheduler-db.ts).
-- $1 build, $2 stepnr, $3 step status, $4 starttime, $5 stoptime, $6 machine,
-- $7 overhead, $8 timesbuilt, $9 isnondeterministic, $10/$11 step output
-- names/paths, $12 log file, $13/$14 build ids/iscachedbuild, $15 build
-- status, $16 size, $17 closuresize, $18 releasename, $19/$20 output
-- names/paths.
with step as (
  update buildsteps
  set busy = 0,
      status = $3,
      errormsg = null,
      starttime = $4,
      stoptime = $5,
      machine = $6,
      overhead = $7,
      timesbuilt = $8,
      isnondeterministic = $9,
      resolveddrvpath = null
  where build = $1 and stepnr = $2
  returning build, stepnr
), step_outputs as (
  insert into buildstepoutputs (build, stepnr, name, path)
  select step.build, step.stepnr, o.name, o.path
  from step, unnest($10::text[], $11::text[]) as o(name, path)
  on conflict (build, stepnr, name) do update set path = excluded.path
), wanted as (
  select w.id, w.cached, w.ord
  from unnest($13::integer[], $14::integer[]) with ordinality as w(id, cached, ord)
), ended as (
  update builds
  set finished = 1,
      buildstatus = $15,
      starttime = $4,
      stoptime = $5,
      size = $16,
      closuresize = $17,
      releasename = $18,
      iscachedbuild = wanted.cached,
      notificationpendingsince = $5
  from wanted
  where builds.id = wanted.id and builds.finished = 0
  returning builds.id, wanted.ord
), outputs as (
  update buildoutputs as bo
  set path = o.path
  from ended, unnest($19::text[], $20::text[]) as o(name, path)
  where bo.build = ended.id and bo.name = o.name
), products as (
  delete from buildproducts where build in (select id from ended)
), metrics as (
  delete from buildmetrics where build in (select id from ended)
), notes as (
  select 1 as ord, 'step_finished' as channel, step.build || E'\t' || step.stepnr || E'\t' || $12::text as payload from step
  union all
  select 2, 'build_finished', string_agg(ended.id::text, E'\t' order by ended.ord) from ended having count(*) > 0
)
-- pg_notify is volatile, so it runs after the sort, in the notes' order.
select (select count(*) from (select pg_notify(n.channel, n.payload) from notes as n order by n.ord) as sent)::integer as notified,
       array(select ended.id from ended order by ended.ord) as ended
