-- Steps of the demo's builds running now.
select count(*)::int as n from buildsteps where build = any($1::int[]) and busy <> 0
