/**
 * Resolution of content-addressed derivations (src/nix/resolve-derivation.ts):
 * on the worker pool versus on the main thread.
 *
 *   npm run -s bench -- resolve [--count 10000] [--threads 2] [--batch 256] [--reps 5]
 *
 * `--count` floating CA derivations, each with two floating CA inputs (of a
 * set of 64) whose placeholders appear in its builder arguments and env, are
 * built in memory (the shape a .drv of a CA package set has after parsing),
 * with the inputs' realised paths. Modes, run interleaved `--reps` times
 * after a warm-up, medians reported: `main` (the baseline: resolveDerivation
 * in a loop on the main thread), `poolBatched` (`--batch` derivations per
 * resolveDerivations task), `poolPerDrv` (one resolveDerivation task per
 * derivation, what CaResolver sends: one per step as it becomes runnable).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { downstreamPlaceholder, hashPlaceholder } from '../src/nix/derivation-paths.ts';
import type { Derivation } from '../src/nix/derivation.ts';
import { realisedKey, resolveDerivation } from '../src/nix/resolve-derivation.ts';
import { WorkerPool } from '../src/workers/pool.ts';
import { benchOptions, feedPool, median, round, timeModes } from './common.ts';

export const describe = 'CA derivation resolution rate (drvs/s): worker pool (batched, per drv) vs main thread';

const base32 = '0123456789abcdfghijklmnpqrsvwxyz';
function hashPart(i: number, salt: string): string {
  let s = '';
  for (let k = 0, x = i * 7919 + salt.length * 104729; k < 32; k++, x = (x * 1103515245 + 12345) >>> 0) s += base32[x % 32];
  return s;
}

function floating(): Derivation['outputs'] {
  return new Map([['out', { path: '', hashAlgo: 'r:sha256', hash: '' }]]);
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const { count, threads, batch, reps } = benchOptions(argv, { count: 10_000, threads: 2, batch: 256, reps: 5 });
  const inputs = Array.from({ length: 64 }, (_, i) => `/nix/store/${hashPart(i, 'in')}-ca-input-${i}.drv`);
  const realised = new Map(inputs.map((d, i) => [realisedKey(d, 'out'), `/nix/store/${hashPart(i, 'out')}-ca-input-${i}`]));
  const items = Array.from({ length: count }, (_, i) => {
    const a = inputs[i % inputs.length]!;
    const b = inputs[(i * 7 + 1) % inputs.length]!;
    const drv: Derivation = {
      outputs: floating(),
      inputDrvs: new Map([a, b].sort().map((d) => [d, ['out']])),
      inputSrcs: ['/nix/store/' + hashPart(0, 'src') + '-builder.sh'],
      system: 'x86_64-linux',
      builder: '/bin/sh',
      args: ['-e', `cp -r ${downstreamPlaceholder(a, 'out')}/share $out; ln -s ${downstreamPlaceholder(b, 'out')}/bin $out/bin`],
      env: new Map([
        ['PATH', `${downstreamPlaceholder(a, 'out')}/bin:${downstreamPlaceholder(b, 'out')}/bin`],
        ['buildInputs', `${downstreamPlaceholder(a, 'out')} ${downstreamPlaceholder(b, 'out')}`],
        ['name', `ca-bench-${i}`],
        ['out', hashPlaceholder('out')],
        ['system', 'x86_64-linux'],
      ]),
    };
    return { drvPath: `/nix/store/${hashPart(i, 'drv')}-ca-bench-${i}.drv`, drv, realised };
  });

  const pool = new WorkerPool({ threads });
  await Promise.all(Array.from({ length: threads }, () => pool.ping()));

  const main = async () => {
    for (const it of items) resolveDerivation(it.drvPath, it.drv, it.realised);
  };
  const poolBatched = () => feedPool(pool, items, batch, (chunk) => pool.resolveDerivations(chunk));
  const poolPerDrv = () => feedPool(pool, items, 1, ([it]) => pool.resolveDerivation(it!.drvPath, it!.drv, it!.realised));
  // The same answers either way: a bench of a wrong result is worth nothing.
  const [first] = await pool.resolveDerivations(items.slice(0, 1));
  if (first!.drv.args[1] !== resolveDerivation(items[0]!.drvPath, items[0]!.drv, realised).drv.args[1]) throw new Error('pool and main thread resolve differently');

  const modes = { main, poolBatched, poolPerDrv };
  const runs = await timeModes(modes, reps);

  // How long the main thread stays blocked: the event-loop delay while each runs.
  const delay = async (fn: () => Promise<void>) => {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    await fn();
    await new Promise((r) => setImmediate(r));
    h.disable();
    return { p50: round(h.percentile(50) / 1e6, 2), p99: round(h.percentile(99) / 1e6, 2), max: round(h.max / 1e6, 2) };
  };
  // The main-thread loop never yields: it blocks the event loop for its whole run.
  const eventLoopDelayMs = { main: { blockedMs: round(median(runs.main)) }, poolBatched: await delay(poolBatched), poolPerDrv: await delay(poolPerDrv) };
  await pool.close();

  const results = Object.fromEntries(
    Object.entries(runs).map(([k, r]) => [k, { medianMs: round(median(r)), runsMs: r.map((x) => round(x)), drvsPerSec: Math.round(count / (median(r) / 1000)) }]),
  );
  return {
    count,
    threads,
    batch,
    reps,
    baseline: 'main',
    results,
    speedupPoolBatchedVsMain: round(median(runs.main) / median(runs.poolBatched), 2),
    speedupPoolPerDrvVsMain: round(median(runs.main) / median(runs.poolPerDrv), 2),
    eventLoopDelayMs,
  };
}
