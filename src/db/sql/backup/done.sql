update hydrant.backup_queue set state = 'done', doneAt = $3, attempts = attempts + 1, lastError = null
where target = $1 and build = $2
