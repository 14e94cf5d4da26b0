insert into projects (name, displayname, owner) values ($1, $1, 'hydrant')
on conflict (name) do nothing
