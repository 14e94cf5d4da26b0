-- NOTIFYs (channel, payload pairs, in order) in a single round trip.
-- Delivered at commit, so listeners only hear about what really happened.
select pg_notify(n.channel, n.payload) from unnest($1::text[], $2::text[]) as n(channel, payload)
