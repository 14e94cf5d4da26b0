import fc from 'fast-check';
import type { DerivationSummary } from '../../src/actors/model.ts';
import { MemoryStore } from '../sim/memory-store.ts';

/** A random DAG of derivations: node i may depend on any j < i. Some outputs may already be valid. */
export interface RandomDag {
  store: MemoryStore;
  drvs: DerivationSummary[];
  /** Indices of derivations queued as builds (may repeat: two builds of one drv). */
  builds: number[];
}

export const SYSTEMS = ['x86_64-linux', 'aarch64-linux'] as const;

/**
 * `ca`: some derivations are floating content-addressed (no output path
 * before the build, never valid at start), resolved when their inputs are
 * built (test/sim/simulated-resolver.ts).
 */
export function dagArbitrary(opts: { maxNodes?: number; systems?: readonly string[]; features?: readonly string[]; ca?: boolean } = {}): fc.Arbitrary<RandomDag> {
  const maxNodes = opts.maxNodes ?? 25;
  const systems = opts.systems ?? ['x86_64-linux'];
  const features = opts.features ?? [];
  return fc
    .integer({ min: 1, max: maxNodes })
    .chain((n) =>
      fc.record({
        deps: fc.array(fc.array(fc.nat(), { maxLength: 3 }), { minLength: n, maxLength: n }),
        system: fc.array(fc.nat(systems.length - 1), { minLength: n, maxLength: n }),
        feature: fc.array(fc.option(fc.constantFrom(...(features.length ? features : ['none'])), { freq: 4 }), { minLength: n, maxLength: n }),
        valid: fc.array(fc.boolean(), { minLength: n, maxLength: n }),
        builds: fc.array(fc.nat(n - 1), { minLength: 1, maxLength: Math.min(n, 10) }),
        ca: fc.array(opts.ca ? fc.boolean() : fc.constant(false), { minLength: n, maxLength: n }),
      }),
    )
    .map(({ deps, system, feature, valid, builds, ca }) => {
      const store = new MemoryStore();
      const drvs: DerivationSummary[] = [];
      deps.forEach((ds, i) => {
        const inputs = i === 0 ? [] : [...new Set(ds.map((d) => d % i))];
        const f = feature[i];
        const drv: DerivationSummary = {
          drvPath: `/nix/store/${String(i).padStart(32, '0')}-n${i}.drv`,
          system: systems[system[i]!]!,
          requiredFeatures: f && f !== 'none' ? [f] : [],
          preferLocalBuild: false,
          outputs: [{ name: 'out', path: ca[i] ? null : `/nix/store/${String(i).padStart(32, '1')}-n${i}` }],
          inputDrvs: new Map(inputs.map((j) => [drvs[j]!.drvPath, ['out']])),
          isCA: ca[i]!,
        };
        drvs.push(drv);
        store.add(drv);
        // A valid output stands for a path already built earlier.
        if (valid[i] && i % 3 === 0 && !ca[i]) store.valid.add(drv.outputs[0]!.path!);
      });
      return { store, drvs, builds };
    });
}

/** Replays one reported run: FC_SEED and FC_PATH from fast-check's failure message. */
export function replay(): { seed?: number; path?: string } {
  const seed = process.env.FC_SEED;
  return seed === undefined ? {} : { seed: Number(seed), path: process.env.FC_PATH };
}

/** What a derivation does when built, in the property tests' simulated builders. */
export type Behaviour = 'ok' | 'fail' | 'flaky' | 'broken' | 'withOutput';

/**
 * The oracle of the property tests: the statuses Hydra may give a build, from
 * the DAG, the outputs valid before anything ran, each derivation's
 * behaviour, and the derivations no machine supports. Written independently
 * of the runner: a build is succeeded (0) if its output was valid. Otherwise,
 * when derivations it still had to build fail first (ones whose own inputs
 * all built), it takes the status of one of them as Hydra passes it on to
 * dependents (Rust runner state/mod.rs:2441-2449: 2 for a failed build,
 * else the step's own status): 2 (fails), 3 (broken: transient failures until
 * the retries run out) or 9 (unsupported); which one depends on which fails
 * first. Otherwise it is unsupported (9) if its own derivation is, else as it
 * behaves: failed (1), aborted (3), failed with output (6), or succeeded
 * (flaky ones fail once, then build).
 */
export function expectedStatus(
  dag: RandomDag,
  behaviours: readonly Behaviour[],
  validAtStart: ReadonlySet<string>,
  top: number,
  unsupported: ReadonlySet<number> = new Set(),
): readonly number[] {
  // A floating CA output (no path) is never valid at start.
  const valid = (i: number) => {
    const p = dag.drvs[i]!.outputs[0]!.path;
    return p !== null && validAtStart.has(p);
  };
  const index = new Map(dag.drvs.map((d, i) => [d.drvPath, i]));
  const asDependency = (i: number): number | null =>
    unsupported.has(i) ? 9 : behaviours[i] === 'fail' ? 2 : behaviours[i] === 'broken' ? 3 : null;
  // The first failures below a derivation: its inputs' ones, else its own when its inputs all build.
  const memo = new Map<number, Set<number>>();
  const firstFailures = (i: number): Set<number> => {
    const known = memo.get(i);
    if (known) return known;
    const found = new Set<number>();
    memo.set(i, found);
    if (valid(i)) return found;
    for (const p of dag.drvs[i]!.inputDrvs.keys()) for (const s of firstFailures(index.get(p)!)) found.add(s);
    if (found.size === 0) {
      const own = asDependency(i);
      if (own !== null) found.add(own);
    }
    return found;
  };
  if (valid(top)) return [0];
  const below = new Set<number>();
  for (const p of dag.drvs[top]!.inputDrvs.keys()) for (const s of firstFailures(index.get(p)!)) below.add(s);
  if (below.size > 0) return [...below];
  if (unsupported.has(top)) return [9];
  return [{ ok: 0, flaky: 0, withOutput: 6, fail: 1, broken: 3 }[behaviours[top]!]];
}
