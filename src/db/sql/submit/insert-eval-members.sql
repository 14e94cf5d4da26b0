insert into jobsetevalmembers (eval, build, isnew)
select $1, build, isnew from unnest($2::int[], $3::int[]) as m(build, isnew)
