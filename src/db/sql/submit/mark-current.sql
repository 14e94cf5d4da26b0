-- The builds of the newest evaluation are the jobset's current ones.
update builds set iscurrent = case when id = any($2::int[]) then 1 else 0 end
where jobset_id = $1 and (iscurrent = 1 or id = any($2::int[]))
