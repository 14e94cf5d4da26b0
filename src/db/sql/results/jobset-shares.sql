-- Every jobset with its scheduling shares and the build seconds of its steps
-- that stopped after $1 (fair share). Propagated failure rows are skipped:
-- they record another build's time, not work done for this jobset.
with recent as (
  select b.jobset_id, sum(greatest(s.stoptime - s.starttime, 0))::bigint as seconds
  from buildsteps s
  join builds b on b.id = s.build
  where s.starttime is not null
    and s.stoptime is not null
    and s.stoptime > $1
    and s.propagatedfrom is null
  group by b.jobset_id
)
select j.id, j.project, j.name, j.schedulingshares, coalesce(r.seconds, 0) as seconds
from jobsets j
left join recent r on r.jobset_id = j.id
order by j.id
