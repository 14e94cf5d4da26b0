-- Builds matching what an operator typed (GET /status/history?q=), newest first.
-- One search kind is set, the others null (src/status/build-search.ts):
--   $1 a build id;
--   $2 a whole store path: the build of that derivation, the build with that output, and every
--      build that had a step of that derivation or output (Builds(drvPath), BuildOutputs(path),
--      BuildSteps(drvPath) and BuildStepOutputs(path) are indexed in Hydra's schema);
--   $3 a store path's hash part or base name, matched inside derivation and output paths
--      (drvPath by Hydra's trigram index IndexTrgmBuildsOnDrvpath where pg_trgm is installed);
--   $4 text, case-insensitive, inside project:jobset:job, the Nix name, the derivation's path or
--      a step's machine: the builds are walked by id backwards (the primary key), so a page costs
--      the rows walked until it is full.
-- The others are /status/history's filters, null for "any": $5 project, $6 jobset, $7 part of the
-- job name, $8 finished, $9 buildstatus, $10 failed only; $11 limit, $12 offset.
-- Values only ever reach the statement as parameters; $3 has LIKE's wildcards and escape escaped.
-- The two halves (indexed kinds, text) are exclusive, each filtered, ordered and cut to the page's
-- end on its own, so a path search joins its few hits and a text search stops walking once the page is full.
-- The caller bounds its time (statement_timeout).
with hits as (
  select $1::int as id where $1::int is not null
  union select b.id from builds b where b.drvpath = $2::text
  union select o.build from buildoutputs o where o.path = $2::text
  union select s.build from buildsteps s where s.drvpath = $2::text
  union select so.build from buildstepoutputs so where so.path = $2::text
  union select b.id from builds b
         where b.drvpath like '%/' || replace(replace(replace($3::text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
  union select o.build from buildoutputs o
         where o.path like '%/' || replace(replace(replace($3::text, '\', '\\'), '%', '\%'), '_', '\_') || '%'
),
matched as (
  (select b.id
     from builds b join jobsets j on j.id = b.jobset_id
    where b.id in (select id from hits)
      and ($5::text is null or j.project = $5)
      and ($6::text is null or j.name = $6)
      and ($7::text is null or strpos(b.job, $7) > 0)
      and ($8::int is null or b.finished = $8)
      and ($9::int is null or (b.finished = 1 and b.buildstatus = $9))
      and (not coalesce($10::boolean, false) or (b.finished = 1 and b.buildstatus <> 0))
    order by b.id desc
    limit $11::bigint + $12::bigint)
  union all
  (select b.id
     from builds b join jobsets j on j.id = b.jobset_id
    where $4::text is not null and $1::int is null and $2::text is null and $3::text is null
      and (strpos(lower(j.project || ':' || j.name || ':' || b.job), lower($4::text)) > 0
           or strpos(lower(coalesce(b.nixname, '')), lower($4::text)) > 0
           or strpos(lower(b.drvpath), lower($4::text)) > 0
           or exists (select 1 from buildsteps s
                       where s.build = b.id and strpos(lower(s.machine), lower($4::text)) > 0))
      and ($5::text is null or j.project = $5)
      and ($6::text is null or j.name = $6)
      and ($7::text is null or strpos(b.job, $7) > 0)
      and ($8::int is null or b.finished = $8)
      and ($9::int is null or (b.finished = 1 and b.buildstatus = $9))
      and (not coalesce($10::boolean, false) or (b.finished = 1 and b.buildstatus <> 0))
    order by b.id desc
    limit $11::bigint + $12::bigint)
)
select b.id, b.finished, b.buildstatus, b.job, b.nixname, b.system, b.drvpath,
       b.timestamp, b.starttime, b.stoptime, b.iscachedbuild,
       j.project, j.name as jobset
  from matched m join builds b on b.id = m.id join jobsets j on j.id = b.jobset_id
 order by b.id desc
 limit $11 offset $12
