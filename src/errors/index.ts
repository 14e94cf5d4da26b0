export { HydrantError } from './hydrant-error.ts';
export { NixFormatError } from './nix-format-error.ts';
export { SchemaMismatchError } from './schema-mismatch-error.ts';
export { ConfigError } from './config-error.ts';
export { DatabaseUnavailableError } from './database-unavailable-error.ts';
export { NixCommandError } from './nix-command-error.ts';
export { NarDumpError } from './nar-dump-error.ts';
