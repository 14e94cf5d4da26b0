/** Errors in what an operator gives Hydrant: configuration and command-line input. */
import { errorKind } from './hydrant-error.ts';

/** Invalid configuration file or option. */
export class ConfigError extends errorKind('CONFIG_INVALID') {}

/** `hydrant demo` could not run its demo (a builder did not start or died, ...). */
export class DemoError extends errorKind('DEMO_FAILED') {}

/** A Nix file given to `hydrant submit --file` did not evaluate; the message is Nix's own error text. */
export class NixEvaluationError extends errorKind('NIX_EVAL') {}
