/**
 * .drv reading + parsing throughput: main thread vs the worker pool.
 *
 *   npm run bench -- drv-parse [--count 3000] [--threads 2] [--batch 64] [--reps 3]
 *
 * One Nix expression yields `--count` derivations, each depending on two
 * earlier ones (so inputDrvs are non-trivial), instantiated once with
 * nix-instantiate (re-instantiating later is cheap and yields the same paths).
 *
 * Modes: mainReadParse (fs.promises.readFile + parse: what the event loop can
 * afford), mainReadSyncParse (readFileSync + parse: fastest, but blocks the
 * loop), mainParseOnly (texts already in memory), poolBatched (--batch paths
 * per task, read and parsed in the worker), poolPerDrv (one task per .drv).
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parseDerivation } from '../src/nix/derivation.ts';
import { WorkerPool } from '../src/workers/pool.ts';
import { benchOptions, feedPool, MK, instantiateExpr, log, median, round, time, timeModes } from './common.ts';

export const describe = '.drv read+parse rate (drvs/s): main thread vs worker pool (batched and one task per drv)';

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const { count, threads, batch, reps } = benchOptions(argv, { count: 3000, threads: 2, batch: 64, reps: 3 });

  log(`instantiating ${count} derivations`);
  const inst = await time(() =>
    instantiateExpr(`let ${MK}
      drvs = builtins.genList (i: mk {
        name = "hydrant-bench-drv-\${toString i}";
        script = "echo \${toString i} > $out";
        deps = if i < 2 then [] else [ (builtins.elemAt drvs (i / 2)) (builtins.elemAt drvs (i - 1)) ];
        extra = { index = i; tag = "bench"; };
      }) ${count};
    in drvs`),
  );
  const paths = inst.value;
  log(`instantiated ${paths.length} in ${round(inst.ms)} ms`);

  const pool = new WorkerPool({ threads });
  await Promise.all(Array.from({ length: threads }, () => pool.ping()));

  const texts = await Promise.all(paths.map((p) => readFile(p, 'utf8')));
  const totalBytes = texts.reduce((s, t) => s + Buffer.byteLength(t), 0);

  const mainReadParse = async () => {
    for (const p of paths) parseDerivation(await readFile(p));
  };
  const mainReadSyncParse = async () => {
    for (const p of paths) parseDerivation(readFileSync(p));
  };
  const mainParseOnly = async () => {
    for (const t of texts) parseDerivation(t);
  };
  const poolBatched = () => feedPool(pool, paths, batch, (chunk) => pool.parseDerivationFiles(chunk));
  const poolPerDrv = () => feedPool(pool, paths, 1, (one) => pool.parseDerivationFiles(one));

  const modes = { mainReadParse, mainReadSyncParse, mainParseOnly, poolBatched, poolPerDrv };
  const runs = await timeModes(modes, reps);

  // How busy does the main thread stay while the pool parses? (event-loop delay)
  const { monitorEventLoopDelay } = await import('node:perf_hooks');
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  await poolBatched();
  h.disable();
  const loopDelayPoolMs = { p50: round(h.percentile(50) / 1e6, 2), p99: round(h.percentile(99) / 1e6, 2), max: round(h.max / 1e6, 2) };
  h.reset();
  h.enable();
  await mainReadParse();
  h.disable();
  const loopDelayMainMs = { p50: round(h.percentile(50) / 1e6, 2), p99: round(h.percentile(99) / 1e6, 2), max: round(h.max / 1e6, 2) };
  await pool.close();

  const results = Object.fromEntries(
    Object.entries(runs).map(([k, r]) => [k, { medianMs: round(median(r)), runsMs: r.map((x) => round(x)), drvsPerSec: Math.round(paths.length / (median(r) / 1000)) }]),
  );
  return {
    count: paths.length,
    avgDrvBytes: Math.round(totalBytes / paths.length),
    instantiateMs: round(inst.ms),
    threads,
    batch,
    reps,
    results,
    speedupPoolBatchedVsMain: round(median(runs.mainReadParse) / median(runs.poolBatched), 2),
    eventLoopDelay: { duringPoolBatched: loopDelayPoolMs, duringMainThreadParse: loopDelayMainMs },
  };
}
