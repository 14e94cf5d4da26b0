/** Errors in what an operator gives Hydrant: configuration and command-line input. */
import { HydrantError } from './hydrant-error.ts';

/** Invalid configuration file or option. */
export class ConfigError extends HydrantError {
  readonly code = 'CONFIG_INVALID';
}

/** `hydrant demo` could not run its demo (a builder did not start or died, ...). */
export class DemoError extends HydrantError {
  readonly code = 'DEMO_FAILED';
}

/** A Nix file given to `hydrant submit --file` did not evaluate; the message is Nix's own error text. */
export class NixEvaluationError extends HydrantError {
  readonly code = 'NIX_EVAL';
}
