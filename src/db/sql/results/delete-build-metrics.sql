-- Metrics are replaced as a whole (a restarted build may have old ones).
delete from buildmetrics where build = $1
