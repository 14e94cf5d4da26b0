select id, project, name from jobsets where id = $1
