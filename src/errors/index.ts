export { HydrantError } from './hydrant-error.ts';
export * from './config.ts';
export * from './database.ts';
export * from './nix.ts';
export * from './workers.ts';
export * from './files.ts';
export * from './protocol.ts';
export * from './machines.ts';
export * from './provision.ts';
