update hydrant.backup_queue set attempts = attempts + 1, nextAttempt = $3, lastError = $4
where target = $1 and build = $2
