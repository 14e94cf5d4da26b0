-- The superuser (the admin credential) takes the password set by set-password.sql.
do $$
begin
  execute format('alter role current_user with password %L', current_setting('hydrant.password'));
end$$
