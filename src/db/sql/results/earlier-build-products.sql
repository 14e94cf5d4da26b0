-- The products of an earlier build, in their order (Hydra: "order by productnr").
select type, subtype, filesize, sha256hash, path, name, defaultpath
from buildproducts
where build = $1
order by productnr
