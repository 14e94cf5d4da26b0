-- Content-addressed outputs are only known once built: fill (or add) the
-- step's output paths.
insert into buildstepoutputs (build, stepnr, name, path)
select $1, $2, o.name, o.path
from unnest($3::text[], $4::text[]) as o(name, path)
on conflict (build, stepnr, name) do update set path = excluded.path
