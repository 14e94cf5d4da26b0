-- The evaluator created one BuildOutputs row per output (path null for
-- content-addressed ones); the runner fills in what was built.
update buildoutputs as bo
set path = o.path
from unnest($2::text[], $3::text[]) as o(name, path)
where bo.build = $1 and bo.name = o.name
