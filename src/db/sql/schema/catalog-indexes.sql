select tablename as object, indexdef as definition
from pg_indexes
where schemaname = current_schema()
