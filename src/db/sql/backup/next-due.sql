-- When target $1's next pending backup is due (null: none pending).
select min(nextAttempt) as at from hydrant.backup_queue where target = $1 and state = 'pending'
