-- Registers a target (its start is now) and returns when it started.
with ins as (
  insert into hydrant.backup_targets (target, since) values ($1, $2)
  on conflict (target) do nothing
  returning since
)
select since from ins
union all
select since from hydrant.backup_targets where target = $1
limit 1
