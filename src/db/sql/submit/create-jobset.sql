-- A legacy jobset (Hydra's check constraint wants an input and a path) that
-- hydra-evaluator leaves alone: it only looks at enabled != 0, and even a
-- scheduled one is never polled with checkinterval 0 (docs/OPERATIONS.md).
insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath, enabled, checkinterval, description)
values ($2, $1, '', 'src', $3, 0, 0, 'queued by hydrant submit; not evaluated by hydra-evaluator')
on conflict (project, name) do nothing
returning id
