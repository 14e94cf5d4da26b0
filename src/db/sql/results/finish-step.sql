-- The attempt ended: the row stops being busy and records how it went.
update buildsteps
set busy = 0,
    status = $3,
    errormsg = $4,
    starttime = $5,
    stoptime = $6,
    machine = $7,
    overhead = $8,
    timesbuilt = $9,
    isnondeterministic = $10,
    resolveddrvpath = $11
where build = $1 and stepnr = $2
