-- One NOTIFY per payload on one channel, in a single round trip. Delivered at
-- commit, so listeners only hear about what really happened.
select pg_notify($1, p) from unnest($2::text[]) as p
