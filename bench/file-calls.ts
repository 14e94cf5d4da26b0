/**
 * The runner's file calls for one finished step, alone: what a silent,
 * successful step costs in the publisher and the directory cache (read the
 * missing plain log, write the compressed log, a GC root, probe the cache,
 * rename the NAR into place, write the narinfo, read two .drv files), made
 * as before (every call through fs.promises, as at 6f79236) and as now
 * (synchronous calls, one fdatasync on the pool). Reports the process's CPU
 * (every thread: the main thread and libuv's pool) and wall time per step,
 * with `--lanes` steps in flight, as the runner finishes several at once.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { link, mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirectoryStorage } from '../src/cache/directory-storage.ts';
import { tempPathFor } from '../src/cache/publish-file.ts';
import { addRootFileSync } from '../src/nix/root-file.ts';
import { readWholeFile } from '../src/util/small-file.ts';
import { EMPTY_BZIP2, writeCompressedBuildLog } from '../src/publish/log-compression.ts';
import type { WorkerPool } from '../src/workers/pool.ts';
import { benchOptions, log, median, round } from './common.ts';

export const describe = "the runner's file calls for one finished step, through fs.promises (before) and synchronous (now)";

interface Paths {
  logs: string;
  roots: string;
  cache: string;
  drvs: string[];
}

const narinfo = Buffer.from(`StorePath: /nix/store/${'a'.repeat(32)}-x\nURL: nar/${'b'.repeat(52)}.nar.zst\n${'References: x\n'.repeat(20)}`);

/** One step, every call through fs.promises (the code of 6f79236). */
const beforeLogDirs = new Set<string>();

async function stepBefore(p: Paths, i: number, fsync: boolean): Promise<void> {
  const name = `${i.toString(36).padStart(32, '0')}-step`;
  const plain = join(p.logs, name.slice(0, 2), name.slice(2));
  await readFile(plain).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  const temp = `${plain}.bz2.tmp-${process.pid}`;
  const logDir = join(p.logs, name.slice(0, 2));
  if (!beforeLogDirs.has(logDir)) await mkdir(logDir).catch(() => {});
  beforeLogDirs.add(logDir);
  await writeFile(temp, EMPTY_BZIP2);
  await rename(temp, `${plain}.bz2`);
  const root = await open(join(p.roots, name), 'a');
  await root.close();
  await stat(join(p.cache, `${name}.narinfo`)).catch(() => {});
  const nar = join(p.cache, 'nar', `${name}.nar.zst`);
  const narTmp = tempPathFor(nar);
  writeFileSync(narTmp, 'nar'); // the worker pool's part, outside what is compared
  await rename(narTmp, nar);
  const final = join(p.cache, `${name}.narinfo`);
  const tmp = tempPathFor(final);
  const fh = await open(tmp, 'wx', 0o644);
  await fh.writeFile(narinfo);
  if (fsync) await fh.datasync();
  await fh.close();
  await link(tmp, final).catch(() => {});
  await unlink(tmp);
  for (const d of p.drvs) {
    const f = await open(d, 'r');
    await f.stat();
    await f.readFile();
    await f.close();
  }
}

/** The same step with the functions the runner uses now. */
async function stepNow(p: Paths, i: number, storage: DirectoryStorage): Promise<void> {
  const name = `${i.toString(36).padStart(32, '0')}-step`;
  const plain = join(p.logs, name.slice(0, 2), name.slice(2));
  // The publisher's readLog: a stat that reports the missing file without an error.
  statSync(plain, { throwIfNoEntry: false });
  // The empty log needs no worker: the pool is not touched.
  await writeCompressedBuildLog(undefined as unknown as WorkerPool, plain, Buffer.alloc(0), false);
  addRootFileSync(p.roots, name);
  await storage.has(`${name}.narinfo`);
  const narKey = `nar/${name}.nar.zst`;
  const narTmp = await storage.tempFile(narKey);
  writeFileSync(narTmp, 'nar');
  await storage.put(narKey, { file: narTmp }, { contentType: 'application/x-nix-nar', sameBytes: true });
  await storage.put(`${name}.narinfo`, narinfo, { contentType: 'text/x-nix-narinfo' });
  for (const d of p.drvs) await readWholeFile(d);
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const o0 = benchOptions(argv, {
    steps: 2000,
    lanes: 4,
    reps: 5,
    /** Leave out the narinfo's fdatasync (the same call in both): only the calls that differ are measured. */
    'no-fsync': false,
  });
  const o = { ...o0, fsync: !o0['no-fsync'] };
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-file-calls-'));
  try {
    const drvs = [0, 1].map((k) => {
      const f = join(dir, `input-${k}.drv`);
      writeFileSync(f, `Derive([("out","/nix/store/${'c'.repeat(32)}-x","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo"],[${'("k","v"),'.repeat(40)}("out","/nix/store/x")])`);
      return f;
    });
    const runs: Record<'before' | 'now', { cpuUs: number[]; wallUs: number[] }> = { before: { cpuUs: [], wallUs: [] }, now: { cpuUs: [], wallUs: [] } };
    let seq = 0;
    for (let rep = 0; rep < o.reps; rep++) {
      for (const variant of ['before', 'now'] as const) {
        const root = join(dir, `${variant}-${rep}`);
        const p: Paths = { logs: join(root, 'logs'), roots: join(root, 'roots'), cache: join(root, 'cache'), drvs };
        for (const d of [p.logs, p.roots, join(p.cache, 'nar')]) mkdirSync(d, { recursive: true });
        const storage = await DirectoryStorage.open(p.cache, { fsync: o.fsync, dirs: ['nar'] });
        let next = 0;
        const lane = async (): Promise<void> => {
          while (next < o.steps) {
            const i = seq++;
            next++;
            if (variant === 'before') await stepBefore(p, i, o.fsync);
            else await stepNow(p, i, storage);
          }
        };
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        await Promise.all(Array.from({ length: o.lanes }, lane));
        const wall = performance.now() - t0;
        const cpu = process.cpuUsage(cpu0);
        runs[variant].cpuUs.push((cpu.user + cpu.system) / o.steps);
        runs[variant].wallUs.push((wall * 1000) / o.steps);
        log(`rep ${rep + 1} ${variant}: ${round((cpu.user + cpu.system) / o.steps, 1)} µs CPU, ${round((wall * 1000) / o.steps, 1)} µs wall per step`);
        rmSync(root, { recursive: true, force: true });
      }
    }
    const summary = (v: 'before' | 'now') => ({ cpuUsPerStep: round(median(runs[v].cpuUs), 1), wallUsPerStep: round(median(runs[v].wallUs), 1), cpuUs: runs[v].cpuUs.map((x) => round(x, 1)) });
    return { steps: o.steps, lanes: o.lanes, reps: o.reps, fsync: o.fsync, before: summary('before'), now: summary('now'), loadAvg1: round(loadavg()[0]!, 2) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
