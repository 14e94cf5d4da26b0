-- Builds by id (one bounded chunk of ids per call), finished or not.
select b.id, b.jobset_id, j.project, j.name as jobset, b.job, b.drvpath, b.system,
       b.maxsilent, b.timeout, b.timestamp, b.priority, b.globalpriority, b.finished
from builds b
join jobsets j on j.id = b.jobset_id
where b.id = any($1::int[])
order by b.id
