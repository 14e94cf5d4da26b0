select tablename as object, rulename || ' ' || definition as definition
from pg_rules
where schemaname = current_schema()
