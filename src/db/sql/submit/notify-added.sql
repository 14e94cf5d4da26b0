-- As Hydra's evaluator does: the payload is the lowest new build id, so a runner
-- reads from there (an evaluation that commits after a later one is not missed).
select pg_notify('builds_added', $1::text)
