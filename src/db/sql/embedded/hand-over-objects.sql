-- Run as the superuser in the hydra database. State directories of older
-- versions had the superuser create the tables; the runner's role takes over
-- whatever the superuser still owns in schema public. Sequences of serial or
-- identity columns follow their table; extension members stay as they are.
do $$
declare
  me oid := (select oid from pg_roles where rolname = current_user);
  r record;
begin
  for r in
    select c.oid::regclass as name, c.relkind
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'public' and c.relowner = me and c.relkind in ('r', 'p', 'v', 'm', 'S')
       and not exists (select from pg_depend d
                        where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i', 'e'))
  loop
    execute format('alter %s %s owner to hydrant_runner',
                   case r.relkind when 'S' then 'sequence' when 'v' then 'view' when 'm' then 'materialized view' else 'table' end,
                   r.name);
  end loop;
  for r in
    select p.oid::regprocedure as name, p.prokind
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'public' and p.proowner = me
       and not exists (select from pg_depend d
                        where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
  loop
    execute format('alter %s %s owner to hydrant_runner',
                   case r.prokind when 'p' then 'procedure' when 'a' then 'aggregate' else 'function' end,
                   r.name);
  end loop;
end$$
