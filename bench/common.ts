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

/**
 * Hands `items` to a worker pool in chunks of `batch` as fast as its
 * backpressure allows (`ready()`, then submit with no await in between),
 * then waits for every answer.
 */
export async function feedPool<T>(pool: { ready(): Promise<void> }, items: readonly T[], batch: number, submit: (chunk: T[]) => Promise<unknown>): Promise<void> {
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < items.length; i += batch) {
    await pool.ready();
    pending.push(submit(items.slice(i, i + batch)));
  }
  await Promise.all(pending);
}

/**
 * Runs every mode once to warm up (JIT, page cache, worker module load),
 * then `reps` rounds of all of them in turn; returns each mode's times in ms.
 */
export async function timeModes<K extends string>(modes: Record<K, () => Promise<unknown>>, reps: number): Promise<Record<K, number[]>> {
  const entries = Object.entries(modes) as [K, () => Promise<unknown>][];
  const runs = Object.fromEntries(entries.map(([k]) => [k, [] as number[]])) as Record<K, number[]>;
  for (const [, fn] of entries) await fn();
  for (let i = 0; i < reps; i++) {
    log(`rep ${i + 1}/${reps}`);
    for (const [k, fn] of entries) runs[k].push((await time(fn)).ms);
  }
  return runs;
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
