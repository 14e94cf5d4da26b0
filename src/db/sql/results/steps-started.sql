-- Step attempts begin, all in one statement (its own transaction, one round
-- trip): what startStep does per start inside a transaction (lock-build.sql,
-- insert-step.sql, NOTIFY step_started), plus build_started for a build's
-- first step, with the same rows and NOTIFYs in the same order.
--
-- stepnr: the builds' rows are locked (in id order, as the other writers
-- lock them) before any step row is inserted, so no other writer numbers a
-- step of these builds until this one commits. But one statement has one
-- snapshot, taken before any wait for those locks: a step committed by the
-- previous lock holder may be invisible to max(stepnr), and the insert then
-- fails on the primary key (23505) instead of numbering twice. The caller
-- retries the statement (a fresh snapshot), and after a few failures falls
-- back to the transaction, whose insert statement starts after the wait.
--
-- A build that does not exist (any more) inserts nothing at all: `locked`
-- lists the builds found, and the caller reports the missing one, as the
-- transaction's failed lock would.
--
-- $1 build ids, in the order they are numbered (by build id, then as
-- given), $2 drvpaths, $3 systems, $4 machines, $5 starttimes, $6 first step
-- of its build (NOTIFY build_started), $7 busy, $8 type, $9/$10/$11 outputs:
-- the 1-based position of their start in $1, names, paths.
with wanted as (
  select s.ord, s.build, s.drvpath, s.system, s.machine, s.starttime, s.first
  from unnest($1::integer[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::boolean[])
       with ordinality as s(build, drvpath, system, machine, starttime, first, ord)
), locked as materialized (
  -- LockRows sits above the sort: the rows are locked in id order.
  select id from builds where id in (select build from wanted) order by id for no key update
), numbered as (
  select w.ord, w.build, w.drvpath, w.system, w.machine, w.starttime, w.first,
         coalesce((select max(b.stepnr) from buildsteps b where b.build = w.build), 0)
           + (row_number() over (partition by w.build order by w.ord))::integer as stepnr
  from wanted w
  -- An init plan: the locks are taken before the first row reaches the insert.
  where (select count(*) from locked) = (select count(distinct build) from wanted)
), step as (
  insert into buildsteps (
    build, stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime,
    machine, system, propagatedfrom, overhead, timesbuilt, isnondeterministic,
    resolveddrvpath
  )
  select n.build, n.stepnr, $8::integer, n.drvpath, $7::integer, null::integer, null::text, n.starttime, null::integer,
         n.machine, n.system, null::integer, null::integer, null::integer, null::boolean, null::text
  from numbered n
  returning build, stepnr
), started as (
  select n.ord, n.build, n.stepnr, n.first from step join numbered n using (build, stepnr)
), outputs as (
  insert into buildstepoutputs (build, stepnr, name, path)
  select s.build, s.stepnr, o.name, o.path
  from started s
  join unnest($9::integer[], $10::text[], $11::text[]) as o(start, name, path) on o.start = s.ord
), notes as (
  select s.ord * 2 as k, 'step_started' as channel, s.build || E'\t' || s.stepnr as payload from started s
  union all
  select s.ord * 2 + 1, 'build_started', s.build::text from started s where s.first
)
-- pg_notify is volatile, so it runs after the sort, in the notes' order.
select array(select id from locked) as found,
       array(select s.stepnr from started s order by s.ord) as stepnrs,
       (select count(*) from (select pg_notify(n.channel, n.payload) from notes as n order by n.k) as sent)::integer as notified
