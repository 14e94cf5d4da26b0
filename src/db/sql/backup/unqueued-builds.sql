-- Builds that ended with status 0 or 6 at or after $2 and have no queue row
-- for target $1 yet, with the names the jobs regex matches.
select b.id, j.project, j.name as jobset, b.job
from builds b
join jobsets j on j.id = b.jobset_id
where b.finished = 1 and b.buildstatus in (0, 6) and b.stoptime >= $2
  and not exists (select 1 from hydrant.backup_queue q where q.target = $1 and q.build = b.id)
order by b.id
