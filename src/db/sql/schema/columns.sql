-- Every column of every table in the current schema (names are folded to
-- lower case, as PostgreSQL stores unquoted identifiers).
select table_name, column_name
from information_schema.columns
where table_schema = current_schema()
