/**
 * Benchmark runner: `npm run bench -- <name> [flags]`.
 * Each benchmark prints exactly one JSON object on stdout; progress goes to stderr.
 */
import { cpus } from 'node:os';

interface Bench {
  describe: string;
  run(args: string[]): Promise<Record<string, unknown>>;
}

const BENCHES: Record<string, () => Promise<Bench>> = {
  'nar-hash': () => import('./nar-hash.ts'),
  'drv-parse': () => import('./drv-parse.ts'),
  dispatch: () => import('./dispatch.ts'),
  'dispatch-core': () => import('./dispatch-core.ts'),
  e2e: () => import('./e2e.ts'),
  'file-calls': () => import('./file-calls.ts'),
  viz: () => import('./viz.ts'),
  demo: () => import('./demo.ts'),
  abort: () => import('./abort.ts'),
  resolve: () => import('./resolve.ts'),
  s3: () => import('./s3.ts'),
  soak: () => import('./soak.ts'),
  'history-search': () => import('./history-search.ts'),
  'step-starts': () => import('./step-starts.ts'),
};

async function main(): Promise<void> {
  const [name, ...args] = process.argv.slice(2);
  const load = name === undefined ? undefined : BENCHES[name];
  if (!load) {
    process.stderr.write(`usage: npm run bench -- <name> [flags]\n\nbenchmarks:\n`);
    for (const [n, l] of Object.entries(BENCHES)) process.stderr.write(`  ${n.padEnd(10)} ${(await l()).describe}\n`);
    process.exitCode = 2;
    return;
  }
  const bench = await load();
  const result = await bench.run(args);
  const env = { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown' };
  process.stdout.write(`${JSON.stringify({ bench: name, ...result, env })}\n`);
}

await main();
