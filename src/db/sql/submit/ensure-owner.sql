-- Projects need an owner; jobsets created by `hydrant submit` belong to a
-- local account that cannot log in (its password is not a hash).
insert into users (username, emailaddress, password) values ('hydrant', 'hydrant@localhost', '!')
on conflict (username) do nothing
