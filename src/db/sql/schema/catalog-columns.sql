select table_name as object,
       column_name || ' ' || data_type || case when is_nullable = 'NO' then ' not null' else '' end
         || coalesce(' default ' || column_default, '') as definition
from information_schema.columns
where table_schema = current_schema()
