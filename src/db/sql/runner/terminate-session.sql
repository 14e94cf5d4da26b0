-- Ends this runner's own previous lock session (by pid), which still holds
-- the lock after its connection was given up for dead (a hung server).
select pg_terminate_backend($1)
