-- Pending backups of target $1 whose next attempt is due at $2, oldest first.
select build, attempts
from hydrant.backup_queue
where target = $1 and state = 'pending' and nextAttempt <= $2
order by nextAttempt, build
limit $3
