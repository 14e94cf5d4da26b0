-- The metrics of an earlier build.
select name, unit, value
from buildmetrics
where build = $1
order by name
