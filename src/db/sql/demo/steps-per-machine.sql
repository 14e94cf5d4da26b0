-- Steps of the demo's builds that ran on each builder, by outcome (aborted:
-- attempts cut short, e.g. by a stop, and retried).
select machine,
       count(*) filter (where status = 0)::int as succeeded,
       count(*) filter (where status not in (0, 3, 4))::int as failed,
       count(*) filter (where status in (3, 4))::int as aborted
from buildsteps
where build = any($1::int[]) and propagatedfrom is null and machine <> '' and busy = 0
group by machine
order by machine
