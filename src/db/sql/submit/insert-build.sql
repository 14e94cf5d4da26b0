insert into builds (finished, timestamp, jobset_id, job, nixname, description, drvpath, system,
                    license, homepage, maintainers, maxsilent, timeout, ischannel, iscurrent, priority)
values (0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14)
returning id
