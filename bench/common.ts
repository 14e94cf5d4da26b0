
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

// The same trivial-derivation helpers the tests use.
import { instantiate } from '../test/helpers/nix.ts';
export { MK_DRV as MK } from '../test/helpers/nix.ts';

/** Instantiates a Nix expression; returns the .drv paths it evaluates to. */
export function instantiateExpr(expr: string): Promise<string[]> {
  return instantiate(expr);
}

export { realise } from '../test/helpers/nix.ts';
