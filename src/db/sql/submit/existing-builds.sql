-- Builds of this jobset for the same job and derivation: an evaluation
-- that finds one again does not queue a duplicate (as Hydra's evaluator).
select id, job, drvpath from builds
where jobset_id = $1 and drvpath = any($2::text[])
