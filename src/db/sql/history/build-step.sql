-- One step row of a build: what its log is named by.
select s.stepnr, s.drvpath, s.busy, s.status from buildsteps s where s.build = $1 and s.stepnr = $2
