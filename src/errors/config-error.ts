import { HydrantError } from './hydrant-error.ts';

/** Invalid configuration file or option. */
export class ConfigError extends HydrantError {
  readonly code = 'CONFIG_INVALID';
}
