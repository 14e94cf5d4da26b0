-- One build's row for the status API (finished or not), with its jobset and outputs.
select b.id, b.finished, b.buildstatus, b.job, b.drvpath, b.system, b.nixname,
       b.timestamp, b.starttime, b.stoptime, b.iscachedbuild, b.size, b.closuresize,
       j.name as jobset, j.project,
       coalesce((select json_agg(json_build_object('name', o.name, 'path', o.path) order by o.name)
                   from buildoutputs o where o.build = b.id), '[]'::json) as outputs
  from builds b join jobsets j on j.id = b.jobset_id
 where b.id = $1
