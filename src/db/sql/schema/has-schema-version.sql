-- Whether a Hydra schema (its SchemaVersion table) exists, and whether any
-- other Hydra table does.
select to_regclass('schemaversion') is not null as has_version,
       to_regclass('builds') is not null as has_builds
