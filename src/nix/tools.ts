import { spawn } from 'node:child_process';
import { NixCommandError } from '../errors/index.ts';

/**
 * Settings every Nix invocation gets (REFERENCE §7): no sandbox (builders may
 * run as root without user namespaces), no default substituter (each build
 * would otherwise wait on DNS for cache.nixos.org), and the experimental
 * features Hydrant relies on. Callers' extra lines win because they come last.
 */
export const BASE_NIX_CONFIG = [
  'sandbox = false',
  'substituters =',
  'experimental-features = nix-command ca-derivations',
  'warn-dirty = false',
].join('\n');

export function nixEnv(extraConfig = '', base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const config = [BASE_NIX_CONFIG, base.NIX_CONFIG ?? '', extraConfig].filter(Boolean).join('\n');
  return { ...base, NIX_CONFIG: config };
}

export interface RunNixOptions {
  input?: Buffer | string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  extraConfig?: string;
}

export interface RunNixResult {
  stdout: Buffer;
  stderr: string;
}

/** Runs a Nix tool to completion, collecting stdout as bytes; throws NixCommandError on failure. */
export function runNix(command: string, args: readonly string[], options: RunNixOptions = {}): Promise<RunNixResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: nixEnv(options.extraConfig, options.env),
      cwd: options.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new NixCommandError([command, ...args], null, String(e))));
    child.on('close', (code) => {
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) resolve({ stdout: Buffer.concat(out), stderr });
      else reject(new NixCommandError([command, ...args], code, stderr));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
  });
}

/** Convenience: stdout as trimmed text lines. */
export async function runNixLines(command: string, args: readonly string[], options: RunNixOptions = {}): Promise<string[]> {
  const { stdout } = await runNix(command, args, options);
  return stdout.toString('utf8').split('\n').map((l) => l.trim()).filter(Boolean);
}
