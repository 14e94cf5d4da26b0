import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/db/embedded.ts';
import { createPool } from '../../src/db/pool.ts';
import { ensureSchema } from '../../src/db/schema.ts';
import { startCli } from '../helpers/cli.ts';
import { busySteps, joined, processesWithArg, startBuilder, submit, type CliProcess } from '../helpers/fleet.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * The fault campaign: about a hundred builds through a real runner and two
 * real builder processes with private stores, while the runner is SIGKILLed
 * twice, a builder is SIGKILLed, PostgreSQL restarts, and the disk holding
 * the build logs fills up and is freed again. At the end every build must
 * have the status it would have had without any fault (an oracle computed
 * from the jobset alone), no step row may be busy, and no derivation may
 * have two successful step rows.
 */

const LIBS = 10;
const APPS = 80;
const TOPS = 10;
const FAILING_LIB = 3;
/** Apps whose own build fails (besides those that need the failing lib). */
const failingApp = (j: number): boolean => j % 17 === 5;
const appsOfTop = (k: number): number[] => Array.from({ length: APPS / TOPS }, (_, i) => k * (APPS / TOPS) + i);

/** The jobset: libs, apps on one lib each, tops on eight apps each. Every step prints, so logs are written. */
function jobset(nonce: string): string {
  const sleep = (i: number) => `0.${3 + (i % 7)}`;
  const lines: string[] = [];
  for (let i = 0; i < LIBS; i++) {
    const fail = i === FAILING_LIB ? 'echo lib fails; exit 1; ' : '';
    lines.push(`lib${i} = mk { name = "lib${i}-${nonce}"; script = "echo building lib${i}; /bin/sleep ${sleep(i)}; ${fail}echo lib${i} > $out"; };`);
  }
  for (let j = 0; j < APPS; j++) {
    const fail = failingApp(j) ? 'echo app fails; exit 1; ' : '';
    lines.push(`app${j} = mk { name = "app${j}-${nonce}"; deps = [ lib${j % LIBS} ]; script = "echo building app${j}; /bin/sleep ${sleep(j)}; ${fail}/bin/cat $deps > $out"; };`);
  }
  for (let k = 0; k < TOPS; k++) {
    const deps = appsOfTop(k).map((j) => `app${j}`).join(' ');
    lines.push(`top${k} = mk { name = "top${k}-${nonce}"; deps = [ ${deps} ]; script = "echo building top${k}; /bin/cat $deps > $out"; };`);
  }
  return `{ }: let ${MK_DRV} in rec {\n${lines.join('\n')}\n}`;
}

/** Each job's status without faults: 0 success, 1 its own build failed, 2 a dependency failed. */
function oracle(): Record<string, number> {
  const want: Record<string, number> = {};
  for (let i = 0; i < LIBS; i++) want[`lib${i}`] = i === FAILING_LIB ? 1 : 0;
  for (let j = 0; j < APPS; j++) want[`app${j}`] = j % LIBS === FAILING_LIB ? 2 : failingApp(j) ? 1 : 0;
  for (let k = 0; k < TOPS; k++) want[`top${k}`] = appsOfTop(k).every((j) => want[`app${j}`] === 0) ? 0 : 2;
  return want;
}

describe('fault campaign', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-campaign-'));
  // Traversable, so that the database's data stays in it (removed with it) rather than under /var/lib/hydrant.
  chmodSync(dir, 0o711);
  const logDisk = join(dir, 'data');
  const procs: CliProcess[] = [];
  let server: EmbeddedDatabase;
  let pool: pg.Pool;
  let pgPort: number;
  let grpcPort: number;
  let config: string;
  let tokenFile: string;

  const startPostgres = async () => {
    server = await startEmbeddedPostgres({ stateDir: join(dir, 'pg'), port: pgPort, ephemeral: true });
  };
  const startRunner = async (): Promise<CliProcess> => {
    const p = startCli(['serve', '--config', config]);
    procs.push(p);
    await p.waitFor(/"msg":"builder protocol listening"/, 60_000);
    return p;
  };
  const finished = async (): Promise<number> => (await pool.query('select count(*)::int n from builds where finished = 1')).rows[0].n as number;
  let runner: CliProcess | undefined;
  /** Waits until `n` builds have finished; fails at once if the runner exits meanwhile. */
  const reach = (n: number, what: string) =>
    waitFor(async () => {
      if (runner && runner.child.exitCode !== null) throw new Error(`the runner exited ${runner.child.exitCode} while waiting for ${what}:\n${runner.output().slice(-3000)}`);
      return (await finished()) >= n;
    }, 240_000, what);

  beforeAll(async () => {
    pgPort = await freePort();
    grpcPort = await freePort();
    await startPostgres();
    pool = createPool(server.url, { max: 2 });
    // A pool error while PostgreSQL restarts must not fail the test process.
    pool.on('error', () => {});
    await ensureSchema(pool);
    mkdirSync(logDisk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', logDisk]);
    tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, randomBytes(24).toString('hex'), { mode: 0o600 });
    config = join(dir, 'runner.toml');
    writeFileSync(
      config,
      [
        `dbUrl = "${server.url}"`,
        `hydraDataDir = "${logDisk}"`,
        `tokenPaths = ["${tokenFile}"]`,
        `grpcListen = "127.0.0.1:${grpcPort}"`,
        'httpListen = ""',
        `rootsDir = "${join(dir, 'roots')}"`,
        'builderGraceInS = 1',
        'builderPingTimeoutInS = 3',
        'retryInterval = 1',
        'retryBackoff = 1',
        'maxRetries = 20',
        'shutdownGraceInS = 1',
        '',
      ].join('\n'),
    );
  }, 120_000);

  afterAll(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    for (const pid of processesWithArg(join(dir, 'b1'))) process.kill(pid, 'SIGKILL');
    await pool?.end().catch(() => {});
    await server?.stop();
    try {
      execFileSync('umount', ['-l', logDisk]);
    } catch {
      // not mounted
    }
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('ends every build as it would have ended without faults', async () => {
    runner = await startRunner();
    const builder = (id: string) => {
      const b = startBuilder(dir, `127.0.0.1:${grpcPort}`, tokenFile, id, 'maxJobs = 2');
      procs.push(b);
      return b;
    };
    const b1 = builder('b1');
    builder('b2');
    await joined(runner, ['b1', 'b2']);

    const release = join(dir, 'release.nix');
    writeFileSync(release, jobset(randomBytes(4).toString('hex')));
    const ids = await submit(server.url, release, 'campaign');
    const want = oracle();
    expect(Object.keys(ids).sort()).toEqual(Object.keys(want).sort());

    // 1. The runner dies mid-run (as the OOM killer kills) and is started again.
    await reach(10, '10 builds before the first runner kill');
    runner.child.kill('SIGKILL');
    await runner.exited;
    runner = await startRunner();

    // 2. A builder dies mid-run; a new one with a store of its own takes its place.
    await reach(25, '25 builds before the builder kill');
    b1.child.kill('SIGKILL');
    await b1.exited;
    builder('b3');

    // 3. PostgreSQL restarts under the runner.
    await reach(40, '40 builds before the database restart');
    await server.stop();
    await startPostgres();

    // 4. The log disk fills up until the runner has met it, then is freed.
    await reach(55, '55 builds before the disk fills');
    const filler = join(logDisk, 'filler');
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { stdio: 'ignore' });
    } catch {
      // dd stops with ENOSPC: the disk is full
    }
    await waitFor(
      async () => (await pool.query("select 1 from buildsteps where status = 3 and errormsg ~* 'ENOSPC|no space left'")).rowCount! > 0,
      120_000,
      'an attempt aborted by the full log disk',
    );
    rmSync(filler);

    // 5. The runner dies once more.
    await reach(70, '70 builds before the second runner kill');
    runner.child.kill('SIGKILL');
    await runner.exited;
    runner = await startRunner();

    await reach(Object.keys(want).length, 'every build to finish');
    const got = Object.fromEntries(
      (await pool.query<{ job: string; buildstatus: number }>('select job, buildstatus from builds')).rows.map((r) => [r.job, r.buildstatus]),
    );
    expect(got).toEqual(want);
    expect(await busySteps(pool)).toBe(0);
    const twice = (await pool.query('select drvpath, count(*)::int n from buildsteps where status = 0 group by drvpath having count(*) > 1')).rows;
    expect(twice).toEqual([]);
    expect(runner.child.exitCode).toBeNull();
    // The faults met running steps: attempts were aborted (runner kills, the builder kill, the full disk) and retried.
    const aborted = (await pool.query<{ errormsg: string | null; n: number }>('select errormsg, count(*)::int n from buildsteps where status = 3 group by errormsg order by errormsg')).rows;
    console.log('aborted attempts by cause:', JSON.stringify(aborted));
    expect(aborted.reduce((n, r) => n + r.n, 0)).toBeGreaterThan(0);
  }, 600_000);
});
