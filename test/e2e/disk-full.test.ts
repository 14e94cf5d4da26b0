import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestDatabase, useTestDatabase } from '../helpers/db.ts';
import { buildRow, busySteps, joined, readBuildLog, startBuilder, startRunner, stepRows, submit, type CliProcess, type RunnerProcess, type StepRow, useFleet } from '../helpers/fleet.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Disk full wherever the runner writes — build logs under hydraDataDir, the
 * binary cache, GC roots — through real builds: each place is a small tmpfs
 * that the test fills, and frees once the failure is seen. The attempt that
 * met the full disk is aborted (status 3, its error naming the file), the
 * runner stays up with nothing left busy, and the retry after the space
 * returns succeeds. Mounting needs root, as the tests' builders do.
 */

const mounts: string[] = [];

/**
 * A fresh tmpfs of `options` (mount -o) at `dir`, unmounted in afterAll.
 * `options` caps nr_inodes as well as size: `fill` takes the last inode too,
 * and tmpfs's default (half the RAM's pages, millions) meant millions of
 * empty files, about 100 s a filesystem.
 */
function mountTmpfs(dir: string, options: string): void {
  mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
  mounts.push(dir);
}

function unmountAll(): void {
  for (const dir of mounts.splice(0).reverse()) {
    try {
      execFileSync('umount', ['-l', dir]);
    } catch {
      // not mounted (any more)
    }
  }
}

/** Fills the filesystem of `dir` to the last byte and inode; returns what to delete to free it. */
function fill(dir: string): string {
  const filler = join(dir, '.filler');
  mkdirSync(filler);
  const fd = openSync(join(filler, 'bytes'), 'w');
  try {
    for (let size = 1 << 20; size >= 1; size >>= 1) {
      const chunk = Buffer.alloc(size);
      for (;;) {
        try {
          writeSync(fd, chunk);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  for (let i = 0; ; i++) {
    try {
      closeSync(openSync(join(filler, String(i)), 'w'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
      throw e;
    }
  }
  return filler;
}

/** Pids of the processes whose command line contains `text`. */
function processesMentioning(text: string): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

function free(filler: string): void {
  rmSync(filler, { recursive: true, force: true });
}

/** The JSON log records of `proc` whose msg is `msg`. */
function records(output: string, msg: string): Record<string, unknown>[] {
  return output
    .split('\n')
    .filter((l) => l.includes(`"msg":"${msg}"`))
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
}

/**
 * Fills `mount`, queues `attr` of `file`, waits for an attempt to be aborted
 * by the full disk, frees the space (and creates `go`, which a build that
 * must not end before may wait for, once a retry has logged its 2000 lines
 * and is the only build left waiting), and waits for the build to finish;
 * returns the build's step rows. Retries come every second, so attempts
 * made before the space returns fail the same way, and are checked alike.
 */
async function buildThroughFullDisk(
  db: TestDatabase,
  mount: string,
  file: string,
  attr: string,
  error: RegExp,
  go?: string,
): Promise<{ id: number; rows: StepRow[] }> {
  const filler = fill(mount);
  let id: number;
  try {
    try {
      id = (await submit(db.url, file, attr, [attr]))[attr]!;
      await waitFor(async () => (await stepRows(db.pool, id)).some((r) => r.status === 3 && r.busy === 0), 90_000, 'an attempt aborted by the full disk');
    } finally {
      free(filler);
    }
    if (go) {
      // `go` only once the one build left waiting for it is an attempt that logged everything: the build of
      // an aborted attempt may not be killed yet, and if it saw `go` it would make the output, which the
      // retry would then find valid, logging nothing.
      const drv = (await buildRow(db.pool, id)).drvpath;
      await waitFor(
        () => (readBuildLog(dirname(mount), drv)?.includes('line 1999 of') ?? false) && processesMentioning(go).length === 1,
        90_000,
        'a retry that logged everything, alone waiting for the space',
      );
    }
  } finally {
    if (go) writeFileSync(go, '');
  }
  await waitFor(async () => (await buildRow(db.pool, id)).finished === 1, 90_000, 'the build to finish once the space is back');
  const rows = await stepRows(db.pool, id);
  expect((await buildRow(db.pool, id)).buildstatus).toBe(0);
  // Every attempt before the last was aborted by the full disk, and says which file it could not write.
  expect(rows.at(-1)).toMatchObject({ status: 0, busy: 0 });
  expect(rows.length).toBeGreaterThan(1);
  for (const r of rows.slice(0, -1)) {
    expect(r.status).toBe(3);
    expect(r.busy).toBe(0);
    expect(r.errormsg).toMatch(error);
  }
  expect(await busySteps(db.pool)).toBe(0);
  return { id, rows };
}

const isRoot = process.getuid?.() === 0;

describe.runIf(isRoot)('a full disk under a runner with a builder process', () => {
  const { db, dir, procs } = useFleet('disk-full', async () => {
    await Promise.all(procs.map((p) => p.exited));
    unmountAll();
  });
  const logs = join(dir, 'build-logs');
  const cache = join(dir, 'cache');
  const roots = join(dir, 'roots');
  const nonce = randomBytes(4).toString('hex');
  const file = join(dir, 'release.nix');
  const go = join(dir, 'go');
  let runner: RunnerProcess;
  let builder: CliProcess;

  beforeAll(async () => {
    // hydraDataDir is `dir`: its build logs, the cache and the GC roots each get a small filesystem of their own.
    mountTmpfs(logs, 'size=1m,nr_inodes=256');
    mountTmpfs(cache, 'size=4m,nr_inodes=256');
    mountTmpfs(roots, 'size=1m,nr_inodes=64');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV}
        # Talks, then waits for the space to be back: an attempt that met the full disk cannot have ended first.
        chatty = mk { name = "chatty-${nonce}"; script = "i=0; while [ $i -lt 2000 ]; do echo line $i of a build that talks a lot; i=$((i+1)); done; while [ ! -e ${go} ]; do /bin/sleep 0.1; done; echo done > $out"; };
        big = n: mk { name = "big-\${n}-${nonce}"; script = "echo building \${n}; /bin/head -c 300000 /dev/urandom > $out"; };
      in { logs = chatty; cache = big "cache"; roots = big "roots"; }`,
    );
    runner = await startRunner(dir, db.url, `retryInterval = 1\nretryBackoff = 1\nmaxRetries = 100\nremoteStoreAddr = ["file://${cache}?compression=none"]`);
    procs.push(runner.proc);
    builder = startBuilder(dir, `127.0.0.1:${runner.port}`, runner.tokenFile, 'b1');
    procs.push(builder);
    await joined(runner.proc, ['b1']);
  });

  it('build logs: the attempt is aborted with the log file named, the runner stays up, and the retry keeps the whole log', async () => {
    const { id } = await buildThroughFullDisk(db, logs, file, 'logs', /cannot write the build log \/\S+build-logs\/\S+: ENOSPC/, go);
    const drv = (await buildRow(db.pool, id)).drvpath;
    const lost = records(runner.proc.output(), 'cannot write the build log; aborting the step');
    expect(lost.length).toBeGreaterThan(0);
    expect(lost[0]).toMatchObject({ level: 50, machine: 'b1', drv, errno: 'ENOSPC' });
    expect(String(lost[0]!.path)).toMatch(new RegExp(`^${logs}/`));
    const log = readBuildLog(dir, drv)!.toString('utf8');
    expect(log).toContain('line 0 of a build that talks a lot');
    expect(log).toContain('line 1999 of a build that talks a lot');
    expect(runner.proc.child.exitCode).toBeNull();
    expect(builder.child.exitCode).toBeNull();
  }, 240_000);

  it('the binary cache: the attempt is aborted with the cache file named, and the retry publishes the output', async () => {
    const { id } = await buildThroughFullDisk(db, cache, file, 'cache', /cannot write a binary cache file \/\S+cache\/\S+: ENOSPC/);
    const out = (await db.pool.query("select path from buildoutputs where build = $1 and name = 'out'", [id])).rows[0].path as string;
    const hashPart = out.slice('/nix/store/'.length, '/nix/store/'.length + 32);
    expect(existsSync(join(cache, `${hashPart}.narinfo`))).toBe(true);
    const failed = records(runner.proc.output(), 'cannot upload the outputs to the cache');
    expect(failed[0]).toMatchObject({ level: 50, cache, errno: 'ENOSPC' });
    expect(runner.proc.child.exitCode).toBeNull();
  }, 240_000);

  it('GC roots: the attempt is aborted with the root named, and the retry registers it', async () => {
    const { id } = await buildThroughFullDisk(db, roots, file, 'roots', /cannot write a GC root \/\S+roots\/\S+: ENOSPC/);
    const out = (await db.pool.query("select path from buildoutputs where build = $1 and name = 'out'", [id])).rows[0].path as string;
    expect(readdirSync(roots)).toContain(out.slice('/nix/store/'.length));
    expect(records(runner.proc.output(), 'cannot register the outputs as GC roots')[0]).toMatchObject({ level: 50, errno: 'ENOSPC' });
    expect(runner.proc.child.exitCode).toBeNull();
  }, 240_000);
});

describe.runIf(isRoot)('a full log disk under the runner’s local builder', () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-disk-full-local-'));
  const logs = join(dir, 'build-logs');
  const nonce = randomBytes(4).toString('hex');
  let runner: InProcessRunner;

  beforeAll(async () => {
    // The local builder builds as a build user, which must see the file the build waits for.
    chmodSync(dir, 0o755);
    mountTmpfs(logs, 'size=1m,nr_inodes=256');
    runner = await InProcessRunner.start(db.url, dir, { localBuilderJobs: 1, tokenPaths: [], retryInterval: 1, retryBackoff: 1, maxRetries: 100 });
  });

  afterAll(async () => {
    await runner?.stop();
    unmountAll();
  });

  it('aborts the attempt with the log file named, stays up, and the retry succeeds with the whole log', async () => {
    const file = join(dir, 'release.nix');
    const go = join(dir, 'go');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} in { chatty = mk { name = "local-chatty-${nonce}"; script = "i=0; while [ $i -lt 2000 ]; do echo line $i of a local build; i=$((i+1)); done; while [ ! -e ${go} ]; do /bin/sleep 0.1; done; echo done > $out"; }; }`,
    );
    const { id } = await buildThroughFullDisk(db, logs, file, 'chatty', /cannot write the build log \/\S+build-logs\/\S+: ENOSPC/, go);
    const rows = await stepRows(db.pool, id);
    expect(new Set(rows.map((r) => r.machine))).toEqual(new Set(['localhost']));
    const log = readBuildLog(dir, (await buildRow(db.pool, id)).drvpath)!.toString('utf8');
    expect(log).toContain('line 1999 of a local build');
    expect(runner.daemon.lifecycle.state).toBe('running');
  }, 240_000);
});
