-- Done rows the scan no longer needs: their build ended before doneAt < $2
-- (the target's since), so no scan looks at it again.
delete from hydrant.backup_queue where target = $1 and state = 'done' and doneAt < $2
