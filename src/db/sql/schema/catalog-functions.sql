select p.proname as object, regexp_replace(p.prosrc, '\s+', ' ', 'g') as definition
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
where n.nspname = current_schema()
