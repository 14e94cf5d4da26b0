-- A build's products (nix-support/hydra-build-products) and its "out" output.
select p.type, p.subtype, p.path, o.path as out
from builds b
left join buildproducts p on p.build = b.id
left join buildoutputs o on o.build = b.id and o.name = 'out'
where b.id = $1
order by p.productnr
