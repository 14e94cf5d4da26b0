select path from buildoutputs where build = $1 and path is not null order by name
