select id from jobsets where project = $1 and name = $2
