-- A legacy jobset (Hydra's check constraint wants an input and a path).
insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath)
values ($2, $1, '', 'src', $3)
on conflict (project, name) do nothing
returning id
