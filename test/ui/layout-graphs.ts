import { prng, syntheticDag } from '../sim/synthetic-dag.ts';

/** A step graph as the visualizer holds it: dependencies by index, and names. */
export interface LayoutGraph {
  readonly name: string;
  readonly deps: number[][];
  readonly names: string[];
}

/**
 * Graphs whose layout `test/ui/fixtures/layout-golden.json` records, as the
 * page laid them out on its main thread before the layout moved to a worker:
 * empty, one step, a long chain, a diamond with name ties, a cycle (bad data),
 * a random DAG with repeated names, and nixpkgs-shaped builds of 300 and
 * 3000 steps (every-edge and packed sizes).
 */
export function layoutGraphs(): LayoutGraph[] {
  const graphs: LayoutGraph[] = [
    { name: 'empty', deps: [], names: [] },
    { name: 'one', deps: [[]], names: ['hello'] },
    { name: 'chain', deps: Array.from({ length: 400 }, (_, i) => (i === 0 ? [] : [i - 1])), names: Array.from({ length: 400 }, (_, i) => `c${399 - i}`) },
    { name: 'diamond', deps: [[], [0], [0], [1, 2], [], [4, 0]], names: ['base', 'left', 'right', 'top', 'base', 'x'] },
    { name: 'cycle', deps: [[1], [0], [], [2, 0]], names: ['a', 'b', 'c', 'd'] },
  ];
  const rnd = prng(7);
  const n = 700;
  const deps: number[][] = [];
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    const k = i === 0 ? 0 : Math.floor(rnd() * Math.min(i, 5));
    const set = new Set<number>();
    for (let j = 0; j < k; j++) set.add(Math.floor(rnd() * i));
    // Dependencies listed in no particular order; names repeat (ties broken by index).
    deps.push([...set].sort(() => (rnd() < 0.5 ? -1 : 1)));
    names.push(`pkg-${Math.floor(rnd() * 60)}`);
  }
  // Indices in the page follow arrival order, not dependency order: shuffle them.
  const perm = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const shuffledDeps: number[][] = new Array(n);
  const shuffledNames: string[] = new Array(n);
  for (let i = 0; i < n; i++) {
    shuffledDeps[perm[i]!] = deps[i]!.map((d) => perm[d]!);
    shuffledNames[perm[i]!] = names[i]!;
  }
  graphs.push({ name: 'random', deps: shuffledDeps, names: shuffledNames });
  for (const steps of [300, 3000]) {
    const dag = syntheticDag({ steps, seed: 3 });
    const index = new Map(dag.derivations.map((d, i) => [d.drvPath, i]));
    graphs.push({
      name: `synthetic-${steps}`,
      deps: dag.derivations.map((d) => [...d.inputDrvs.keys()].map((p) => index.get(p)).filter((j): j is number => j !== undefined)),
      names: dag.derivations.map((d) => {
        const base = d.drvPath.slice(d.drvPath.lastIndexOf('/') + 1);
        return base.slice(33).replace(/\.drv$/, '');
      }),
    });
  }
  return graphs;
}
