import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runNixLines } from '../src/nix/tools.ts';

export function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

export async function time<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const round = (x: number, digits = 1): number => Math.round(x * 10 ** digits) / 10 ** digits;

/** A trivial derivation helper for bench expressions (builders run with PATH unset). */
export const MK = `
  mk = { name, script, deps ? [], extra ? {} }: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    deps = deps;
  } // extra);
`;

/** Instantiates a Nix expression (written to a temp file); returns the .drv paths it evaluates to. */
export async function instantiateExpr(expr: string): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-'));
  const file = join(dir, 'default.nix');
  writeFileSync(file, expr);
  return runNixLines('nix-instantiate', [file]);
}

export async function realise(drvs: string[]): Promise<string[]> {
  return runNixLines('nix-store', ['--realise', ...drvs]);
}
