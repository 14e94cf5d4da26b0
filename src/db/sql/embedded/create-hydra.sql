create database hydra owner hydrant_runner
