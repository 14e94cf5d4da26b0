select c.conrelid::regclass::text as object,
       c.conname || ' ' || pg_get_constraintdef(c.oid) as definition
from pg_constraint c
join pg_namespace n on n.oid = c.connamespace
where n.nspname = current_schema() and c.conrelid <> 0
