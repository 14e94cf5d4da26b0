import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseDerivation, serializeDerivation } from '../../src/nix/derivation.ts';
import { instantiate, MK_DRV, runNixLines } from '../helpers/nix.ts';

/** Runs a nix-store query over `paths` in batches (argument lists stay short on a big store). */
async function queryBatched(args: readonly string[], paths: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < paths.length; i += 500) out.push(...(await runNixLines('nix-store', [...args, ...paths.slice(i, i + 500)])));
  return out;
}

/** Valid paths asked for their deriver: enough for variety, bounded so that a store grown by years of builds stays quick. */
const MAX_PATHS = 3000;

/** Up to `n` of `xs`, spread evenly over the whole list (deterministic). */
function spread<T>(xs: readonly T[], n: number): T[] {
  if (xs.length <= n) return [...xs];
  return Array.from({ length: n }, (_, i) => xs[Math.floor((i * xs.length) / n)]!);
}

/**
 * Derivations Nix itself wrote: the valid derivers Nix records for valid
 * paths of the store (at most MAX_PATHS of them, spread over the store's
 * listing: `nix path-info --all` alone takes half a minute on a store of
 * 370k paths). Any file whose name merely ends in `.drv` (e.g.
 * `builtins.toFile "x.drv" "garbage"`) is not one and is not returned.
 */
async function derivationsNixKnows(): Promise<string[]> {
  const listed = readdirSync('/nix/store').filter((n) => !n.startsWith('.') && !n.endsWith('.drv')).sort();
  const sample = spread(listed, MAX_PATHS).map((n) => `/nix/store/${n}`);
  const unregistered = new Set(await queryBatched(['--check-validity', '--print-invalid'], sample));
  const valid = sample.filter((p) => !unregistered.has(p));
  const derivers = [...new Set(await queryBatched(['--query', '--deriver'], valid))].filter((d) => d.startsWith('/'));
  const invalid = new Set(await queryBatched(['--check-validity', '--print-invalid'], derivers));
  return derivers.filter((d) => !invalid.has(d));
}

describe('derivations in the local store', () => {
  it('parse and re-serialize to identical bytes', async () => {
    // The test's own derivations, so there is a varied set even on a fresh store.
    const own = await instantiate(`let ${MK_DRV} in {
      a = mk { name = "store-drvs-a"; script = "echo a > $out"; };
      b = mk { name = "store-drvs-b"; script = "echo b > $out; echo \\"q\\\\t\\" > $dev"; extra = { outputs = [ "out" "dev" ]; }; };
    }`, ['a', 'b']);
    const drvs = [...new Set([...own, ...(await derivationsNixKnows())])];
    expect(drvs.length).toBeGreaterThanOrEqual(2);
    const mismatched: string[] = [];
    for (const path of drvs) {
      const bytes = readFileSync(path);
      if (!Buffer.from(serializeDerivation(parseDerivation(bytes))).equals(bytes)) mismatched.push(path);
    }
    expect(mismatched).toEqual([]);
  });
});
