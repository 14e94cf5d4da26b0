insert into jobsetevals (jobset_id, timestamp, checkouttime, evaltime, hasnewbuilds, hash, nrbuilds)
values ($1, $2, 0, $3, $4, $5, $6)
returning id
