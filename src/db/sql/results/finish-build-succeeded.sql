-- A build ends exactly once: "finished = 0" turns a second finish into a
-- no-op, and the returned row tells the caller whether this call ended it.
-- notificationPendingSince = stopTime makes hydra-notify pick the build up.
-- In the same statement, for the build this call ended: the output paths
-- the evaluator left for the runner (content-addressed ones are null until
-- built), and its old products and metrics (a restarted build may have
-- some) go, to be replaced.
with build as (
  update builds
  set finished = 1,
      buildstatus = $2,
      starttime = $3,
      stoptime = $4,
      size = $5,
      closuresize = $6,
      releasename = $7,
      iscachedbuild = $8,
      notificationpendingsince = $4
  where id = $1 and finished = 0
  returning id
), outputs as (
  update buildoutputs as bo
  set path = o.path
  from build, unnest($9::text[], $10::text[]) as o(name, path)
  where bo.build = build.id and bo.name = o.name
), products as (
  delete from buildproducts where build in (select id from build)
), metrics as (
  delete from buildmetrics where build in (select id from build)
)
select id from build
