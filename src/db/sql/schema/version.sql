select version from SchemaVersion
