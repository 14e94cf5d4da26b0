-- Serializes schema creation between processes starting at once.
select pg_advisory_xact_lock(hashtext('hydrant:schema'))
