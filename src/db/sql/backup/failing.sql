-- Pending backups of the targets $1 that have failed at least once, most attempts first.
select target, build, attempts, nextAttempt as "nextAttempt", lastError as "lastError"
from hydrant.backup_queue
where target = any($1::text[]) and state = 'pending' and attempts > 0
order by attempts desc, build
limit $2
