-- The runner's role, with the password set by set-password.sql: it logs in,
-- owns the hydra database and may create databases (`hydrant db compare`,
-- the tests' scratch databases), and nothing more: no superuser, so no
-- COPY ... PROGRAM, no server files, no other roles.
do $$
begin
  if not exists (select from pg_roles where rolname = 'hydrant_runner') then
    create role hydrant_runner;
  end if;
  execute format('alter role hydrant_runner with login nosuperuser createdb nocreaterole noreplication nobypassrls password %L',
                 current_setting('hydrant.password'));
end$$
