/** Small helpers shared by the test/nix tests (the Nix runners live in test/helpers/nix.ts). */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NixCommandError } from '../../src/errors/index.ts';
import { runNix } from '../helpers/nix.ts';

export function tempDir(prefix = 'hydrant-nix-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** stdout of a Nix tool as text. */
export async function nixText(command: string, args: readonly string[], extraConfig?: string): Promise<string> {
  const { stdout } = await runNix(command, args, extraConfig === undefined ? {} : { extraConfig });
  return stdout.toString('utf8');
}

export async function nixJson<T = unknown>(command: string, args: readonly string[]): Promise<T> {
  return JSON.parse(await nixText(command, args)) as T;
}

/** Runs a Nix tool that is expected to fail; returns its stderr (throws if it succeeds). */
export async function nixFails(command: string, args: readonly string[], extraConfig?: string): Promise<string> {
  try {
    await runNix(command, args, extraConfig === undefined ? {} : { extraConfig });
  } catch (e) {
    if (e instanceof NixCommandError) return e.stderr;
    throw e;
  }
  throw new Error(`expected ${command} ${args.join(' ')} to fail`);
}

/** Deterministic pseudo-random bytes (xorshift), so golden inputs vary but tests stay reproducible. */
export function pseudoRandomBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
