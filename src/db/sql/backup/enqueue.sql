-- Queues builds $2 for target $1 (a build already queued keeps its row).
insert into hydrant.backup_queue (target, build, queuedAt, nextAttempt)
select $1, unnest($2::integer[]), $3, $3
on conflict (target, build) do nothing
