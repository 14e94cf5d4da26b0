-- The builds of $1 that ended with status 0 or 6, with the names the jobs regex matches.
select b.id, j.project, j.name as jobset, b.job
from builds b
join jobsets j on j.id = b.jobset_id
where b.id = any($1::integer[]) and b.finished = 1 and b.buildstatus in (0, 6)
order by b.id
