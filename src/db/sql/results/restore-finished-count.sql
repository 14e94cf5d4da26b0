-- Puts back the row park-finished-count.sql renamed, counting the builds that
-- finished meanwhile (the bumps the trigger could not apply).
update nrbuilds
set what = 'finished', count = count + $1
where what = 'hydrant:finished-in-batch'
