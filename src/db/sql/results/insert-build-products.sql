-- productnr numbers the products 1..n in the order nix-support listed them.
insert into buildproducts (
  build, productnr, type, subtype, filesize, sha256hash, path, name, defaultpath
)
select $1, p.nr, p.type, p.subtype, p.filesize, p.sha256hash, p.path, p.name, p.defaultpath
from unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
  with ordinality as p(type, subtype, filesize, sha256hash, path, name, defaultpath, nr)
