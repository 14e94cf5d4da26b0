import { parseArgs } from 'node:util';

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

/** A bench's options and their defaults: a number, a flag, or a string (null: a string given or not). */
type OptionDefaults = Record<string, number | boolean | string | null>;

type Options<D extends OptionDefaults> = {
  [K in keyof D]: D[K] extends number ? number : D[K] extends boolean ? boolean : D[K] extends string ? string : string | undefined;
};

/**
 * The bench's `--name value` options and `--flag`s from `argv`, each typed
 * as its default; a number that is not one is refused.
 */
export function benchOptions<const D extends OptionDefaults>(argv: string[], defaults: D): Options<D> {
  const options = Object.fromEntries(
    Object.entries(defaults).map(([name, d]) => [
      name,
      typeof d === 'boolean' ? { type: 'boolean' as const, default: d } : d === null ? { type: 'string' as const } : { type: 'string' as const, default: String(d) },
    ]),
  );
  const { values } = parseArgs({ args: argv, options });
  const out: Record<string, unknown> = {};
  for (const [name, d] of Object.entries(defaults)) {
    const v = values[name];
    if (typeof d === 'number') {
      out[name] = Number(v);
      if (!Number.isFinite(out[name])) throw new Error(`--${name}: ${String(v)} is not a number`);
    } else out[name] = v;
  }
  return out as Options<D>;
}

// The same trivial-derivation helpers the tests use.
import { instantiate } from '../test/helpers/nix.ts';
export { MK_DRV as MK } from '../test/helpers/nix.ts';

/** Instantiates a Nix expression; returns the .drv paths it evaluates to. */
export function instantiateExpr(expr: string): Promise<string[]> {
  return instantiate(expr);
}

export { realise } from '../test/helpers/nix.ts';
