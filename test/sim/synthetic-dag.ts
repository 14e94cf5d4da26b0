import type { DerivationSummary } from '../../src/actors/model.ts';

/**
 * A nixpkgs-shaped graph of derivations for scale tests and benchmarks:
 * a bootstrap chain (like stdenv's stages) that everything depends on, heavy
 * fan-in onto early packages (preferential attachment), and a few long chains.
 * Deterministic for a seed.
 */
export interface SyntheticDagOptions {
  steps: number;
  seed?: number;
  systems?: readonly string[];
  /** Length of the bootstrap chain every package depends on. */
  bootstrap?: number;
  /** Length of each long chain, and how many there are per 10k steps. */
  chainLength?: number;
  chainsPer10k?: number;
  /** Share of packages that are jobs (builds) of their own. */
  buildFraction?: number;
}

export interface SyntheticDag {
  derivations: DerivationSummary[];
  /** The .drv paths to queue as builds, in queue order. */
  builds: string[];
}

const ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function syntheticDag(o: SyntheticDagOptions): SyntheticDag {
  const rand = prng(o.seed ?? 1);
  const systems = o.systems ?? ['x86_64-linux'];
  const hash = () => Array.from({ length: 32 }, () => ALPHABET[Math.floor(rand() * 32)]).join('');
  const derivations: DerivationSummary[] = [];
  const make = (name: string, deps: readonly string[], system: string): string => {
    const h = hash();
    const drvPath = `/nix/store/${h}-${name}.drv`;
    derivations.push({
      drvPath,
      system,
      requiredFeatures: [],
      preferLocalBuild: false,
      outputs: [{ name: 'out', path: `/nix/store/${hash()}-${name}` }],
      inputDrvs: new Map([...new Set(deps)].map((d) => [d, ['out']])),
      isCA: false,
    });
    return drvPath;
  };

  const n = Math.max(1, o.steps);
  const bootstrapLen = Math.min(o.bootstrap ?? 20, n);
  const tips = new Map<string, string>();
  let made = 0;
  for (const system of systems) {
    let prev: string[] = [];
    for (let i = 0; i < bootstrapLen && made < n; i++, made++) {
      const d = make(`bootstrap-${system}-${i}`, prev, system);
      prev = [d];
    }
    if (prev[0]) tips.set(system, prev[0]);
  }
  const chainLength = o.chainLength ?? 200;
  const chains = Math.floor(((o.chainsPer10k ?? 2) * n) / 10_000);
  const packages: { drv: string; system: string }[] = [];
  const builds: string[] = [];
  const buildFraction = o.buildFraction ?? 0.4;
  // Long chains first, so packages can depend on their ends too.
  for (let c = 0; c < chains && made < n; c++) {
    const system = systems[c % systems.length]!;
    let prev = tips.get(system)!;
    for (let i = 0; i < chainLength && made < n; i++, made++) prev = make(`chain${c}-${i}`, [prev, tips.get(system)!], system);
    builds.push(prev);
    packages.push({ drv: prev, system });
  }
  for (let i = 0; made < n; i++, made++) {
    const system = systems[Math.floor(rand() * systems.length)]!;
    const deps = [tips.get(system)!];
    const k = Math.floor(rand() * 4);
    for (let j = 0; j < k && packages.length > 0; j++) {
      // rand()^3 favours early packages: a few are depended on by very many.
      const pick = packages[Math.floor(rand() ** 3 * packages.length)]!;
      if (pick.system === system) deps.push(pick.drv);
    }
    const d = make(`pkg-${i}`, deps, system);
    packages.push({ drv: d, system });
    if (rand() < buildFraction) builds.push(d);
  }
  // Every package nothing depends on is a job too (as in nixpkgs), so the
  // builds need every generated derivation.
  const used = new Set<string>(builds);
  for (const d of derivations) for (const i of d.inputDrvs.keys()) used.add(i);
  for (const p of packages) if (!used.has(p.drv)) builds.push(p.drv);
  return { derivations, builds };
}
