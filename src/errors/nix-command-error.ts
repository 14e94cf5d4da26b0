import { HydrantError } from './hydrant-error.ts';

/** A `nix` tool exited with an error. */
export class NixCommandError extends HydrantError {
  readonly code = 'NIX_COMMAND';
  constructor(
    readonly command: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command.join(' ')} exited with ${exitCode}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
  }
}
