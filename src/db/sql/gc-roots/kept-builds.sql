-- The builds whose paths hydra-update-gc-roots keeps, with the first of its
-- stages that reaches each (a build is kept once, as the first stage saw it):
--   0  every unfinished build
--   1  every finished build marked keep
--   2  the finished builds of each jobset's evaluations that have unfinished
--      builds and of its newest keepnr evaluations with new builds and none
--      unfinished, and the newest successful (status 0 or 6) build of every
--      job in those evaluations
-- Jobsets disabled, hidden (or in a hidden project) and not checked for a
-- week are skipped by stage 2. $1: now, in Unix seconds.
with jobsets as (
  select j.id, j.keepnr
  from Jobsets j join Projects p on p.name = j.project
  where not (j.enabled = 0 and (p.hidden = 1 or j.hidden = 1) and coalesce(j.lastCheckedTime, 0) < $1::bigint - 7 * 24 * 3600)
),
evals as (
  select m.eval as id, b.jobset_id
  from Builds b join JobsetEvalMembers m on m.build = b.id join jobsets j on j.id = b.jobset_id
  where b.finished = 0
  union
  select e.id, j.id
  from jobsets j cross join lateral (
    select e.id from JobsetEvals e
    where e.jobset_id = j.id and e.hasNewBuilds = 1
      and not exists (select 1 from Builds b join JobsetEvalMembers m on m.build = b.id where m.eval = e.id and b.finished = 0)
    order by e.id desc
    limit j.keepnr
  ) e
),
eval_builds as (
  select b.id, b.jobset_id, b.job, b.finished
  from evals e join JobsetEvalMembers m on m.eval = e.id join Builds b on b.id = m.build and b.jobset_id = e.jobset_id
),
kept as (
  select id, 0 as stage from Builds where finished = 0
  union all
  select id, 1 from Builds where finished = 1 and keep = 1
  union all
  select id, 2 from eval_builds where finished = 1
  union all
  select max(b.id), 2
  from Builds b
  where b.finished = 1 and b.buildStatus in (0, 6)
    and (b.jobset_id, b.job) in (select jobset_id, job from eval_builds)
  group by b.jobset_id, b.job
)
select b.id, b.finished, b.buildStatus as "buildStatus", b.drvPath as "drvPath", k.stage,
       coalesce((select array_agg(o.path order by o.name) from BuildOutputs o where o.build = b.id and o.path is not null), '{}') as outputs
from (select id, min(stage) as stage from kept group by id) k
join Builds b on b.id = k.id
order by b.id
