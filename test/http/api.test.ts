import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RunnerDaemon } from '../../src/daemon/serve.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { quietLog, waitFor } from '../helpers/runtime.ts';

describe('HTTP API of a running runner', () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-http-'));
  const daemons: RunnerDaemon[] = [];
  afterAll(async () => {
    for (const d of daemons) await d.stop();
  });

  async function start(over: Record<string, unknown>): Promise<{ daemon: RunnerDaemon; url: string }> {
    const daemon = new RunnerDaemon({ overrides: { dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), httpListen: '127.0.0.1:0', ...over }, log: quietLog });
    daemons.push(daemon);
    await daemon.start();
    return { daemon, url: `http://127.0.0.1:${daemon.http!.port}` };
  }

  it('PUT /build queues a build that the runner then builds; writes need the API token; GET /status reports', async () => {
    const tokenFile = join(dir, 'api-token');
    const token = randomBytes(16).toString('hex');
    writeFileSync(tokenFile, `${token}\n`);
    const { daemon, url } = await start({ apiTokenPaths: [tokenFile], localBuilderJobs: 1 });
    const jobset = await createJobset(db.pool, 'api', 'main');
    const nonce = randomBytes(4).toString('hex');
    const [drv] = await instantiate(`let ${MK_DRV} in mk { name = "api-${nonce}"; script = "echo ok > $out"; }`);
    const put = (body: unknown, auth?: string) =>
      fetch(`${url}/build`, { method: 'PUT', headers: { 'content-type': 'application/json', ...(auth && { authorization: auth }) }, body: typeof body === 'string' ? body : JSON.stringify(body) });

    expect((await put({ jobsetId: jobset, drv })).status).toBe(401);
    expect((await put({ jobsetId: jobset, drv }, 'Bearer wrong')).status).toBe(401);
    const bearer = `Bearer ${token}`;
    expect((await put('{not json', bearer)).status).toBe(400);
    expect((await put({ jobsetId: 'x', drv }, bearer)).status).toBe(400);
    expect((await put({ jobsetId: jobset, drv: '/etc/passwd' }, bearer)).status).toBe(400);
    const unknownJobset = await put({ jobsetId: 999_999, drv }, bearer);
    expect(unknownJobset.status).toBe(404);
    expect(await unknownJobset.json()).toEqual({ error: 'no jobset with id 999999' });
    expect((await put({ jobsetId: jobset, drv: `/nix/store/${'0'.repeat(32)}-missing.drv` }, bearer)).status).toBe(422);
    expect((await db.pool.query('select count(*)::int n from builds')).rows[0].n).toBe(0);

    const ok = await put({ jobsetId: jobset, drv }, bearer);
    expect(ok.status).toBe(200);
    const { buildId } = (await ok.json()) as { buildId: number };
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [buildId])).rows[0].finished === 1, 60_000, 'the build');
    const row = (await db.pool.query('select jobset_id, job, drvpath, buildstatus, iscurrent from builds where id = $1', [buildId])).rows[0];
    expect(row).toEqual({ jobset_id: jobset, job: `api-${nonce}`, drvpath: drv, buildstatus: 0, iscurrent: 1 });

    const status = (await (await fetch(`${url}/status`)).json()) as Record<string, unknown>;
    expect(status.status).toBe('running');
    expect(status.machinesCount).toBe(1);
    expect((status.counters as { buildsSucceeded: number }).buildsSucceeded).toBeGreaterThanOrEqual(1);
    expect((await fetch(`${url}/nothing-here`)).status).toBe(404);
    expect((await fetch(`${url}/status`, { method: 'DELETE' })).status).toBe(405);
    await daemon.stop();
  }, 120_000);

  it('serves nothing over HTTP when httpListen is empty', async () => {
    const daemon = new RunnerDaemon({ overrides: { dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), httpListen: '' }, log: quietLog });
    daemons.push(daemon);
    await daemon.start();
    expect(daemon.lifecycle.state).toBe('running');
    expect(daemon.http).toBeNull();
    await daemon.stop();
  });

  it('refuses writes when no API token is configured', async () => {
    const { daemon, url } = await start({});
    const r = await fetch(`${url}/build`, { method: 'PUT', headers: { authorization: 'Bearer anything' }, body: '{}' });
    expect(r.status).toBe(403);
    await daemon.stop();
  });
});
