-- Products are replaced as a whole (a restarted build may have old ones).
delete from buildproducts where build = $1
