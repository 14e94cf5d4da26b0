-- Hydra's IdempotentInsert rule turns a path already present into a no-op;
-- distinct covers a path given twice in one call, which the rule cannot see.
insert into failedpaths (path)
select distinct p from unnest($1::text[]) as p
