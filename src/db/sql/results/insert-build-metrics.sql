-- BuildMetrics repeats project, jobset, job and timestamp so Hydra can chart
-- a job's metrics without joins; they are copied from the build here. A name
-- given twice keeps its last value (the key is build + name).
insert into buildmetrics (build, name, unit, value, project, jobset, job, timestamp)
select b.id, m.name, m.unit, m.value, j.project, j.name, b.job, b.timestamp
from builds b
join jobsets j on j.id = b.jobset_id
cross join (
  select distinct on (name) name, unit, value
  from unnest($2::text[], $3::text[], $4::float8[]) with ordinality as u(name, unit, value, nr)
  order by name, nr desc
) as m
where b.id = $1
