-- The cheap per-pass check: which builds are still queued, and their bump
-- level. Comparing it with what the scheduler holds finds restarts, cancels,
-- deletions and bumps whose NOTIFY was missed.
select id, globalpriority from builds where finished = 0
