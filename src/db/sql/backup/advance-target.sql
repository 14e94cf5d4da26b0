-- After a scan has queued every matching build: later scans start from $2 (never going back).
update hydrant.backup_targets set since = greatest(since, $2) where target = $1
