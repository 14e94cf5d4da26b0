-- Recent builds, newest first (GET /status/history). Each filter is null for "any":
-- $1 project, $2 jobset, $3 part of the job name, $4 finished (0 queued, 1 finished),
-- $5 buildstatus, $6 true: failed only (finished, buildstatus not 0); $7 limit, $8 offset.
-- Walks builds by id backwards (the primary key), so a page costs its rows, not the table.
select b.id, b.finished, b.buildstatus, b.job, b.nixname, b.system, b.drvpath,
       b.timestamp, b.starttime, b.stoptime, b.iscachedbuild,
       j.project, j.name as jobset
  from builds b join jobsets j on j.id = b.jobset_id
 where ($1::text is null or j.project = $1)
   and ($2::text is null or j.name = $2)
   and ($3::text is null or strpos(b.job, $3) > 0)
   and ($4::int is null or b.finished = $4)
   and ($5::int is null or (b.finished = 1 and b.buildstatus = $5))
   and (not coalesce($6::boolean, false) or (b.finished = 1 and b.buildstatus <> 0))
 order by b.id desc
 limit $7 offset $8
