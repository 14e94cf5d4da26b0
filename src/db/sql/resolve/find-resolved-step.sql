-- The status-13 (resolved) row already recorded for this build and original
-- derivation, if any: a restart that resolves the same step again reuses it
-- instead of adding a second one. The caller holds the build's row lock
-- (lock-build.sql), so two transactions cannot both find none.
select stepnr from buildsteps
where build = $1 and drvpath = $2 and status = 13
order by stepnr
limit 1
