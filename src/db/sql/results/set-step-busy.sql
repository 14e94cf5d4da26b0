-- Progress of a running step; a finished (or aborted) row is left alone.
update buildsteps
set busy = $3
where build = $1 and stepnr = $2 and busy != 0 and status is null
