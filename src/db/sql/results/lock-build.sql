-- Serializes stepnr allocation for one build: whoever holds this row lock is
-- the only one computing max(stepnr) + 1 for it until commit. "no key
-- update" (not "update") still lets other transactions insert rows that
-- reference the build (their foreign key checks take "key share").
select id from builds where id = $1 for no key update
