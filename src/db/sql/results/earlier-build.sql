-- A finished, successful build (0, or 6 failed with output) that produced
-- one of these output paths, as Hydra's getBuildOutputCached looks it up
-- (Rust crates/db connection.rs get_build_output_for_path; C++
-- queue-monitor.cc:643-655): the first output that has one, then the
-- latest such build.
select b.id, b.buildstatus, b.releasename, b.closuresize, b.size
from builds b
join buildoutputs o on o.build = b.id
where b.finished = 1 and b.buildstatus in (0, 6) and o.path = any($1::text[])
order by array_position($1::text[], o.path), b.id desc
limit 1
