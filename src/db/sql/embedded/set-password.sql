-- Hands a password to the DO blocks of this connection: utility statements
-- such as ALTER ROLE take no bind parameters.
select set_config('hydrant.password', $1, false)
