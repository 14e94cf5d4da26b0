import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
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
  afterAll(async () => {
    builder?.child.kill('SIGKILL');
    await daemon?.stop();
  });

  it('answers finished builds from the database, with the failed step, its error and its log', async () => {
    const tokenFile = join(dir, 'builder-token');
    writeFileSync(tokenFile, randomBytes(16).toString('hex'));
    daemon = new RunnerDaemon({
      overrides: { dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), tokenPaths: [tokenFile], grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0' },
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
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 30_000, 'the builder to join');

    const nonce = randomBytes(4).toString('hex');
    const file = writeRelease(
      dir,
      `good = mk { name = "good-${nonce}"; script = "echo fine-${nonce}; echo ok > $out"; };
        bad = mk { name = "bad-${nonce}"; script = "echo first line; echo boom-${nonce} >&2; exit 3"; };
        slow = mk { name = "slow-${nonce}"; script = "echo started-${nonce}; /bin/sleep 20; echo > $out"; };`,
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
    const slowRows = await api(`/status/build/${ids.slow}`);
    expect(slowRows.source).toBeUndefined(); // queued: the live tree
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

    // Bad requests: unknown build, unknown step, a path that is no derivation.
    expect((await fetch(`${base}/status/build/999999`)).status).toBe(404);
    expect((await fetch(`${base}/status/build/${ids.bad}/step/9/log`)).status).toBe(404);
    expect((await fetch(`${base}/status/log?drv=${encodeURIComponent('/nix/store/../../etc/passwd')}`)).status).toBe(400);
    expect((await fetch(`${base}/status/build/${ids.bad}/step/1/log?tail=0`)).status).toBe(400);
  }, 180_000);
});
