-- Per target: backups done and pending, how many of those have failed at
-- least once, and the oldest pending one's queue time.
select target,
       count(*) filter (where state = 'done')::integer as done,
       count(*) filter (where state = 'pending')::integer as pending,
       count(*) filter (where state = 'pending' and attempts > 0)::integer as failing,
       min(queuedAt) filter (where state = 'pending') as "oldestPending"
from hydrant.backup_queue
where target = any($1::text[])
group by target
