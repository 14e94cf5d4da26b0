/**
 * NAR hashing throughput: Hydrant (worker pool, and main thread for
 * reference) against Nix on the same store path in the same run.
 *
 *   npm run bench -- nar-hash [--size-mb 1024] [--files 4] [--reps 3] [--threads 2]
 *                             [--paths 8] [--path-size-mb 64]
 *
 * The path is built once by a derivation writing `--files` files of random
 * bytes with /bin/dd, and reused by later runs (it stays valid in the store).
 * Every timing is taken with the page cache warm, so this measures CPU cost
 * (serialisation + SHA-256), not the disk.
 */
import { execFile } from 'node:child_process';
import { narHash } from '../src/nix/nar-hash.ts';
import { nixEnv } from '../src/nix/tools.ts';
import { WorkerPool } from '../src/workers/pool.ts';
import { benchOptions, MK, instantiateExpr, log, median, realise, round, time } from './common.ts';

export const describe = 'NAR hash of a large store path: Hydrant pool vs nix-store --dump | sha256sum vs nix hash path';

function sh(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('/bin/sh', ['-c', script], { env: nixEnv(), maxBuffer: 1 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${script}: ${stderr || err.message}`)) : resolve(stdout.trim()),
    );
  });
}

/** One derivation per entry of `sizesMb`, each writing `files` files of random bytes totalling that size. */
async function buildPaths(tag: string, sizesMb: number[], files: number): Promise<string[]> {
  const drvs = sizesMb.map((mb, i) => {
    const per = Math.max(1, Math.floor(mb / files));
    const cmds = Array.from({ length: files }, (_, f) => `/bin/dd if=/dev/urandom of=$out/f${f} bs=1M count=${per} status=none`);
    return `(mk { name = "hydrant-bench-nar-${tag}-${i}-${mb}mb-${files}f"; script = "/bin/mkdir $out; ${cmds.join('; ')}"; })`;
  });
  const paths = await realise(await instantiateExpr(`let ${MK} in [ ${drvs.join(' ')} ]`));
  return paths;
}

interface Timing {
  medianMs: number;
  runsMs: number[];
  mbPerSec: number;
}

function timing(runs: number[], bytes: number): Timing {
  const m = median(runs);
  return { medianMs: round(m), runsMs: runs.map((r) => round(r)), mbPerSec: round(bytes / 1e6 / (m / 1000)) };
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, { 'size-mb': 1024, files: 4, reps: 3, threads: 2, paths: 8, 'path-size-mb': 64 });
  const { files, reps, threads } = values;
  const sizeMb = values['size-mb'];
  const nPaths = values.paths;
  const pathSizeMb = values['path-size-mb'];

  log(`building a ${sizeMb} MB path (${files} files) with nix (reused if it already exists)`);
  const [path] = await buildPaths('big', [sizeMb], files);
  log(`path: ${path}`);
  const nixSri = await sh(`nix hash path ${path}`);

  const pool = new WorkerPool({ threads });
  await Promise.all(Array.from({ length: threads }, () => pool.ping()));

  // Warm the page cache and JITs; check agreement with Nix.
  const warm = await pool.narHashPath(path!);
  const narSize = warm.size;
  const hashesAgree = `sha256-${warm.sha256.toString('base64')}` === nixSri;

  const runs = {
    pool: [] as number[],
    main: [] as number[],
    dump: [] as number[],
    dumpOpenssl: [] as number[],
    nixHashPath: [] as number[],
    query: [] as number[],
  };
  for (let i = 0; i < reps; i++) {
    log(`rep ${i + 1}/${reps}`);
    runs.pool.push((await time(() => pool.narHashPath(path!))).ms);
    runs.main.push((await time(() => narHash(path!))).ms);
    const dump = await time(() => sh(`nix-store --dump ${path} | sha256sum`));
    runs.dump.push(dump.ms);
    if (i === 0 && !dump.value.startsWith(warm.sha256.toString('hex'))) throw new Error(`sha256sum disagrees: ${dump.value}`);
    runs.dumpOpenssl.push((await time(() => sh(`nix-store --dump ${path} | openssl dgst -sha256`))).ms);
    runs.nixHashPath.push((await time(() => sh(`nix hash path ${path}`))).ms);
    runs.query.push((await time(() => sh(`nix-store -q --hash ${path}`))).ms);
  }

  const results = {
    hydrantPool: timing(runs.pool, narSize),
    hydrantMainThread: timing(runs.main, narSize),
    nixStoreDumpPipeSha256sum: {
      ...timing(runs.dump, narSize),
      note: 'bound by coreutils sha256sum (~240 MB/s here: no SHA extensions); nix-store --dump alone runs at several GB/s',
    },
    nixStoreDumpPipeOpensslSha256: timing(runs.dumpOpenssl, narSize),
    nixHashPath: timing(runs.nixHashPath, narSize),
    nixStoreQueryHash: {
      ...timing(runs.query, narSize),
      note: 'database lookup of the hash recorded at registration, not a hash computation: not comparable',
    },
  };
  const ratio = {
    poolVsDumpSha256sum: round(results.hydrantPool.mbPerSec / results.nixStoreDumpPipeSha256sum.mbPerSec, 2),
    poolVsNixHashPath: round(results.hydrantPool.mbPerSec / results.nixHashPath.mbPerSec, 2),
    poolVsDumpOpenssl: round(results.hydrantPool.mbPerSec / results.nixStoreDumpPipeOpensslSha256.mbPerSec, 2),
    poolVsMainThread: round(results.hydrantPool.mbPerSec / results.hydrantMainThread.mbPerSec, 2),
  };

  // Many paths: one after another vs all at once on the pool.
  log(`building ${nPaths} paths of ${pathSizeMb} MB`);
  const many = await buildPaths('many', Array.from({ length: nPaths }, () => pathSizeMb), 1);
  let manyBytes = 0;
  for (const r of await Promise.all(many.map((p) => pool.narHashPath(p)))) manyBytes += r.size; // warm-up
  const seq: number[] = [];
  const conc: number[] = [];
  const mainSeq: number[] = [];
  for (let i = 0; i < reps; i++) {
    seq.push(
      (
        await time(async () => {
          for (const p of many) await pool.narHashPath(p);
        })
      ).ms,
    );
    conc.push(
      (
        await time(async () => {
          const pending: Promise<unknown>[] = [];
          for (const p of many) {
            await pool.ready();
            pending.push(pool.narHashPath(p));
          }
          await Promise.all(pending);
        })
      ).ms,
    );
    mainSeq.push(
      (
        await time(async () => {
          for (const p of many) await narHash(p);
        })
      ).ms,
    );
  }
  const concurrency = {
    paths: nPaths,
    pathSizeMb,
    totalNarBytes: manyBytes,
    poolSequential: timing(seq, manyBytes),
    poolConcurrent: timing(conc, manyBytes),
    mainThreadSequential: timing(mainSeq, manyBytes),
    speedupConcurrentVsSequential: round(median(seq) / median(conc), 2),
  };
  const stats = pool.stats();
  await pool.close();

  return {
    path,
    sizeMb,
    files,
    narSize,
    reps,
    threads,
    hashesAgree,
    results,
    ratio,
    concurrency,
    pool: { completed: stats.completed, utilization: round(stats.utilization, 3), runTimeMs: stats.runTimeMs },
  };
}
