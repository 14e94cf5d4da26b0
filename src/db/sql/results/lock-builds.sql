-- Locks many builds in ascending id order (the sort sits below the lock), so
-- two transactions failing overlapping sets of builds cannot deadlock.
select id from builds
where id = any($1::int[])
order by id
for no key update
