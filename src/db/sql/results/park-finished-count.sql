-- Hydra's NrBuildsFinished trigger bumps the one NrBuilds 'finished' row once
-- per finished build. Within one transaction every bump has to step over all
-- the row versions the transaction made before, so failing n builds costs
-- O(n^2) (about 9 s for 20,000). While a large batch is ended, the row is
-- renamed so those bumps find nothing; restore-finished-count.sql puts it back
-- with the total. Only this transaction ever sees the renamed row: others keep
-- reading the committed one, and a concurrent bump waits on the row lock (as
-- it would anyway) and then applies to the restored row.
update nrbuilds set what = 'hydrant:finished-in-batch' where what = 'finished'
