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
 * The oracle of the property tests: the status Hydra gives a build, from the
 * DAG, the outputs valid before anything ran, each derivation's behaviour,
 * and the derivations no machine supports. Written independently of the
 * runner: a build is succeeded (0) if its output was valid,
 * dependency-failed (2) if any derivation it still had to build below it
 * fails (fails, is broken or unsupported), unsupported (9) if its own
 * derivation is, and otherwise as its own derivation behaves: failed (1),
 * aborted (3) when broken (transient failures until the retries run out),
 * failed with output (6), or succeeded (flaky ones fail once, then build).
 */
export function expectedStatus(
  dag: RandomDag,
  behaviours: readonly Behaviour[],
  validAtStart: ReadonlySet<string>,
  top: number,
  unsupported: ReadonlySet<number> = new Set(),
): number {
  // A floating CA output (no path) is never valid at start.
  const valid = (i: number) => {
    const p = dag.drvs[i]!.outputs[0]!.path;
    return p !== null && validAtStart.has(p);
  };
  const index = new Map(dag.drvs.map((d, i) => [d.drvPath, i]));
  const fails = (i: number) => unsupported.has(i) || behaviours[i] === 'fail' || behaviours[i] === 'broken';
  if (valid(top)) return 0;
  const seen = new Set<number>();
  const stack = [...dag.drvs[top]!.inputDrvs.keys()].map((p) => index.get(p)!);
  while (stack.length) {
    const i = stack.pop()!;
    if (seen.has(i) || valid(i)) continue;
    seen.add(i);
    if (fails(i)) return 2;
    for (const p of dag.drvs[i]!.inputDrvs.keys()) stack.push(index.get(p)!);
  }
  if (unsupported.has(top)) return 9;
  return { ok: 0, flaky: 0, withOutput: 6, fail: 1, broken: 3 }[behaviours[top]!];
}
