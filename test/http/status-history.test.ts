import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { RunnerDaemon } from '../../src/daemon/serve.ts';
import { createLogger } from '../../src/util/logger.ts';
import { runCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { startBuilder, type CliProcess } from '../helpers/fleet.ts';
import { writeRelease } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

describe('status API of finished builds and their logs', () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-history-'));
  // The runner's log at the default level (info), as JSON lines.
  const logLines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) logLines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  let daemon: RunnerDaemon | undefined;
  let builder: CliProcess | undefined;
  // Gates of the slow build below: it writes its second line, and ends, when the test opens each
  // (so it is still running while its live log and state are read, however slow the machine).
  const [writeLater, finish] = [join(dir, 'write-later'), join(dir, 'finish')];
  const waitGate = (gate: string) => `while [ ! -e ${gate} ]; do /bin/sleep 0.1; done`;
  afterAll(async () => {
    for (const gate of [writeLater, finish]) writeFileSync(gate, '');
    builder?.child.kill('SIGKILL');
    await daemon?.stop();
  });

  it('answers finished builds from the database, with the failed step, its error and its log', async () => {
    const tokenFile = join(dir, 'builder-token');
    writeFileSync(tokenFile, randomBytes(16).toString('hex'));
    daemon = new RunnerDaemon({
      overrides: {
        dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), tokenPaths: [tokenFile], grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0',
        // Logs are published to the cache too (log/<drv>, bzip2): read from there once the local file is gone.
        remoteStoreAddr: [`file://${join(dir, 'cache')}?log-compression=bzip2`],
      },
      log: createLogger({ level: 'info', destination }),
    });
    await daemon.start();
    const base = `http://127.0.0.1:${daemon.http!.port}`;
    const api = async (path: string): Promise<Json> => {
      const r = await fetch(`${base}${path}`);
      expect(r.status, path).toBe(200);
      return (await r.json()) as Json;
    };
    builder = startBuilder(dir, `127.0.0.1:${daemon.grpcPort}`, tokenFile, 'b1');
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 90_000, 'the builder to join');

    const nonce = randomBytes(4).toString('hex');
    const file = writeRelease(
      dir,
      `good = mk { name = "good-${nonce}"; script = "echo fine-${nonce}; echo ok > $out"; };
        bad = mk { name = "bad-${nonce}"; script = "echo first line; echo boom-${nonce} >&2; exit 3"; };
        slow = mk { name = "slow-${nonce}"; script = "echo started-${nonce}; ${waitGate(writeLater)}; echo later-${nonce}; ${waitGate(finish)}; echo > $out"; };`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'hi', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);
    const ids = Object.fromEntries((await db.pool.query('select job, id from builds')).rows.map((r) => [r.job, r.id as number]));

    // While slow builds, its log so far is readable, by its id in the graph and by its row.
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.buildId === ids.slow && s.busyName === 'building'), 90_000, 'slow to build');
    const running = (await api('/status/steps')).steps.find((s: Json) => s.buildId === ids.slow);
    let live: Response | undefined;
    await waitFor(async () => {
      live = await fetch(`${base}/status/step/${running.id}/log`);
      return live.status === 200 && (await live.clone().text()).includes(`started-${nonce}`);
    }, 15_000, "slow's first line in its live log");
    expect(live!.headers.get('x-log-stored')).toBe('live');
    expect(live!.headers.get('x-log-offset')).toBe('0');
    writeFileSync(writeLater, '');
    // Following it: each read asks from where the last one ended, and gets only what was written since.
    let at = Number(live!.headers.get('x-log-size'));
    let followed = '';
    await waitFor(async () => {
      const r = await fetch(`${base}/status/step/${running.id}/log?offset=${at}&length=65536`);
      expect(r.status).toBe(200);
      expect(Number(r.headers.get('x-log-offset'))).toBe(at);
      const chunk = await r.text();
      followed += chunk;
      at += Buffer.byteLength(chunk);
      return followed.includes(`later-${nonce}`);
    }, 30_000, "slow's later line, followed");
    expect(followed).not.toContain(`started-${nonce}`);
    // While it builds, the history lists it as queued, with its step's state in the runner.
    const queuedNow = await api('/status/history?status=queued');
    expect(queuedNow.builds.find((b: Json) => b.id === ids.slow)).toMatchObject({ finished: false, statusName: null, state: 'building' });
    const slowRows = await api(`/status/build/${ids.slow}`);
    expect(slowRows.source).toBeUndefined(); // queued: the live tree
    writeFileSync(finish, '');
    await waitFor(async () => (await db.pool.query('select count(*)::int as n from builds where finished = 1')).rows[0].n === 3, 90_000, 'all builds to finish');
    await waitFor(async () => (await api('/status')).buildsQueued === 0, 30_000, 'the runner to drop them');

    const bad = await api(`/status/build/${ids.bad}`);
    expect(bad).toMatchObject({ source: 'database', build: { id: ids.bad, project: 'hi', jobset: 'main', job: 'bad', finished: true, status: 'failed' } });
    expect(bad.steps).toHaveLength(1);
    const step = bad.steps[0];
    expect(step).toMatchObject({ stepnr: 1, state: 'failed', statusName: 'failed', machine: 'b1', log: `/status/build/${ids.bad}/step/1/log` });
    expect(step.drvPath).toMatch(new RegExp(`bad-${nonce}\\.drv$`));
    expect(step.errorMsg).toBeTruthy();
    expect(step.stopTime).toBeGreaterThanOrEqual(step.startTime);
    expect(bad.build.failedStep).toBe(1);

    // The runner said so at its default level: one WARN line naming the build, derivation, machine and error.
    const warned = logLines.filter((l) => l.msg === 'step failed' && l.drv === step.drvPath);
    expect(warned).toEqual([expect.objectContaining({ level: 40, build: ids.bad, machine: 'b1', err: step.errorMsg })]);

    const good = await api(`/status/build/${ids.good}`);
    expect(good.build).toMatchObject({ finished: true, status: 'success', failedStep: null });
    expect(good.build.outputs).toEqual([{ name: 'out', path: expect.stringMatching(new RegExp(`good-${nonce}$`)) }]);
    expect(good.steps[0]).toMatchObject({ state: 'succeeded', statusName: 'success', errorMsg: null });

    // The log, by the step's row and by its derivation path, decompressed (the runner stores it as .bz2).
    const log = await fetch(`${base}${step.log}`);
    expect(log.status).toBe(200);
    expect(log.headers.get('x-log-stored')).toBe('bzip2');
    const text = await log.text();
    expect(text).toContain(`boom-${nonce}`);
    expect(text).toContain('first line');
    const byDrv = await fetch(`${base}/status/log?drv=${encodeURIComponent(step.drvPath)}&tail=200`);
    expect(await byDrv.text()).toContain(`boom-${nonce}`);
    // tail bounds the answer to the log's last bytes.
    const tail = await fetch(`${base}${step.log}?tail=5`);
    expect((await tail.arrayBuffer()).byteLength).toBe(5);
    expect(Number(tail.headers.get('x-log-size'))).toBeGreaterThan(5);

    // A part of the log: offset and length, the answer saying where it starts.
    const whole = Buffer.from(text);
    const part = await fetch(`${base}${step.log}?offset=3&length=7`);
    expect(part.headers.get('x-log-offset')).toBe('3');
    expect(Buffer.from(await part.arrayBuffer())).toEqual(whole.subarray(3, 10));
    const pastEnd = await fetch(`${base}${step.log}?offset=${whole.length + 100}`);
    expect(pastEnd.headers.get('x-log-offset')).toBe(String(whole.length));
    expect((await pastEnd.arrayBuffer()).byteLength).toBe(0);
    expect((await fetch(`${base}${step.log}?offset=0&tail=3`)).status).toBe(400);

    // The recent builds, newest first, searchable by project, jobset, job and status, paged.
    const recent = await api('/status/history');
    expect(recent.builds.map((b: Json) => b.id)).toEqual([ids.bad, ids.good, ids.slow].sort((a, b) => b - a));
    expect(recent.builds.find((b: Json) => b.id === ids.bad)).toMatchObject({ project: 'hi', jobset: 'main', job: 'bad', finished: true, buildStatus: 1, statusName: 'failed', link: `/status/build/${ids.bad}` });
    expect(recent.more).toBe(false);
    expect((await api('/status/history?status=failed')).builds.map((b: Json) => b.job)).toEqual(['bad']);
    expect((await api('/status/history?status=success')).builds.map((b: Json) => b.job).sort()).toEqual(['good', 'slow']);
    expect((await api('/status/history?status=queued')).builds).toEqual([]);
    expect((await api('/status/history?job=oo')).builds.map((b: Json) => b.job)).toEqual(['good']);
    expect((await api('/status/history?project=hi&jobset=main&status=1')).builds.map((b: Json) => b.job)).toEqual(['bad']);
    expect((await api('/status/history?project=elsewhere')).builds).toEqual([]);
    const page1 = await api('/status/history?limit=2');
    const page2 = await api('/status/history?limit=2&offset=2');
    expect(page1.more).toBe(true);
    expect(page2.more).toBe(false);
    expect([...page1.builds, ...page2.builds].map((b: Json) => b.id)).toEqual(recent.builds.map((b: Json) => b.id));
    expect((await fetch(`${base}/status/history?status=exploded`)).status).toBe(400);

    // Once the runner's own file is gone, the log is read from the cache's log/<drv> (decompressed).
    const drvBase = step.drvPath.split('/').pop() as string;
    const cached = readFileSync(join(dir, 'cache', 'log', drvBase));
    expect(cached.subarray(0, 3).toString()).toBe('BZh');
    rmSync(join(dir, 'build-logs', drvBase.slice(0, 2), `${drvBase.slice(2)}.bz2`));
    const fromCache = await fetch(`${base}${step.log}`);
    expect(fromCache.headers.get('x-log-stored')).toBe('cache');
    expect(await fromCache.text()).toBe(text);

    // Bad requests: unknown build, unknown step, a path that is no derivation.
    expect((await fetch(`${base}/status/build/999999`)).status).toBe(404);
    expect((await fetch(`${base}/status/build/${ids.bad}/step/9/log`)).status).toBe(404);
    expect((await fetch(`${base}/status/log?drv=${encodeURIComponent('/nix/store/../../etc/passwd')}`)).status).toBe(400);
    expect((await fetch(`${base}/status/build/${ids.bad}/step/1/log?tail=0`)).status).toBe(400);
  }, 180_000);
});
