insert into buildoutputs (build, name, path)
select $1, name, path from unnest($2::text[], $3::text[]) as o(name, path)
