alter database hydra owner to hydrant_runner
