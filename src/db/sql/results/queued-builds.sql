-- Unfinished builds after a given id, in id order, so a reader can resume
-- from the last id it saw instead of re-reading the whole queue.
select b.id, b.jobset_id, j.project, j.name as jobset, b.job, b.drvpath, b.system,
       b.maxsilent, b.timeout, b.timestamp, b.priority, b.globalpriority, b.finished
from builds b
join jobsets j on j.id = b.jobset_id
where b.finished = 0 and b.id > $1
order by b.id
