import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { Substituter } from '../../src/cache/substituter.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { freePort } from '../../src/db/embedded.ts';
import { createRunnerMetrics } from '../../src/metrics/runner-metrics.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { createLogger } from '../../src/util/logger.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { parseMetrics } from '../http/prometheus.ts';
import { buildFixtures, generateKey, tempDir, type Fixtures } from './fixtures.ts';
import { serveDirectory, type DirectoryServer } from '../helpers/directory-server.ts';

/**
 * A binary cache that fails (HTTP 500, a connection dropped in the middle
 * of a NAR, nothing listening) is skipped for the backoff period, with one
 * log line and one count, and asked again after it; what it failed to
 * serve is not remembered as refused. The cache is a directory written by
 * Hydrant's cache code behind an in-process HTTP server whose failures the
 * test switches on and off; the clock is the test's.
 */
let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let server: DirectoryServer;
let url: string;
let publicKey: string;
let mode: 'ok' | 'error' | 'drop-nar' = 'ok';
let requests = 0;

beforeAll(async () => {
  tmp = tempDir('hydrant-subst-backoff-');
  pool = new WorkerPool({ threads: 1 });
  let key: { secretFile: string; publicKey: string };
  [fx, key] = await Promise.all([buildFixtures(tmp), generateKey(tmp, 'hydrant-backoff-1')]);
  publicKey = key.publicKey;
  const dir = join(tmp, 'cache');
  const cache = await BinaryCache.open(`file://${dir}?compression=none&secret-key=${key.secretFile}`, pool);
  await uploadClosure(cache, [fx.paths.user, fx.paths.single]);
  await cache.close();
  server = await serveDirectory(dir, {
    seen: () => requests++,
    answer: (rel, body, res) => {
      if (mode === 'error') {
        res.statusCode = 500;
        res.end('down for maintenance');
        return true;
      }
      if (mode === 'drop-nar' && body && rel.startsWith('nar/')) {
        // Half the NAR, then the connection goes.
        res.setHeader('content-length', body.length);
        res.write(body.subarray(0, body.length >> 1));
        setImmediate(() => res.destroy());
        return true;
      }
      return false;
    },
  });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function watched(urls: string[], now: () => number): Promise<{ s: Substituter; lines: Record<string, unknown>[]; valid: (p: string[]) => Promise<boolean> }> {
  const store = await PrivateStore.create(join(tmp, `store-${Math.random().toString(36).slice(2)}`));
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
      cb();
    },
  });
  const invalid = async (paths: readonly string[]) => {
    const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
    return new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
  };
  const s = await Substituter.open({
    urls, trustedPublicKeys: [publicKey], pool, store, log: createLogger({ level: 'info', destination }), now, backoffMs: 30_000,
    queryValid: async (paths) => {
      const bad = await invalid(paths);
      return new Set(paths.filter((p) => !bad.has(p)));
    },
  });
  return { s, lines, valid: async (paths) => (await invalid(paths)).size === 0 };
}

const failed = (lines: Record<string, unknown>[]) => lines.filter((l) => l.msg === 'substituter failed; skipping it for the backoff period');

describe('a failing HTTP substituter', () => {
  it('answering 500 is skipped for the backoff period, counted in the metrics, and asked again after it', async () => {
    let now = 1_000_000;
    const { s, lines, valid } = await watched([`${url}?priority=10`], () => now);
    const metrics = createRunnerMetrics({
      scheduler: () => null, monitor: () => null, pool, db: new pg.Pool(), uploads: { paths: 0, bytes: 0, narBytes: 0, logs: 0, failures: 0 }, pings: () => new Map(),
      transfers: () => ({ sentNarBytes: 0, sentWireBytes: 0, receivedNarBytes: 0, receivedWireBytes: 0 }), startedAt: Date.now(),
      substituters: () => s.stats(),
    });
    try {
      mode = 'error';
      requests = 0;
      expect(await s.substitute([fx.paths.user])).toBe(false);
      expect(requests).toBe(1);
      expect(failed(lines)).toMatchObject([{ level: 40, substituter: url, code: 'SUBSTITUTER_UNREACHABLE', backoffS: 30 }]);
      expect(String(failed(lines)[0]!.err)).toContain('HTTP 500');
      const during = parseMetrics(await metrics.registry.metrics()).samples;
      expect(during.get(`hydrant_substituter_failures_total{substituter="${url}"}`)).toBe(1);
      expect(during.get(`hydrant_substituter_disabled{substituter="${url}"}`)).toBe(1);

      // Up again but within the period: not asked.
      mode = 'ok';
      expect(await s.substitute([fx.paths.user])).toBe(false);
      expect(await s.substitute([fx.paths.single])).toBe(false);
      expect(requests).toBe(1);
      expect(failed(lines)).toHaveLength(1);

      now += 30_001;
      expect(await s.substitute([fx.paths.user])).toBe(true);
      expect(await valid([fx.paths.user, fx.paths.tree])).toBe(true);
      expect(lines.filter((l) => l.msg === 'substituter answers again')).toMatchObject([{ substituter: url }]);
      const after = parseMetrics(await metrics.registry.metrics()).samples;
      expect(after.get(`hydrant_substituter_failures_total{substituter="${url}"}`)).toBe(1);
      // user's second look-up was the remembered miss (kept until the period's end); single's skipped the cache.
      expect(after.get(`hydrant_substituter_skipped_total{substituter="${url}"}`)).toBe(1);
      expect(after.get(`hydrant_substituter_disabled{substituter="${url}"}`)).toBe(0);
    } finally {
      mode = 'ok';
      await s.close();
    }
  });

  it('dropping a NAR midway is skipped for the period; the path is not remembered as refused', async () => {
    let now = 2_000_000;
    const { s, lines, valid } = await watched([url], () => now);
    try {
      mode = 'drop-nar';
      await expect(s.substitute([fx.paths.single])).rejects.toMatchObject({ code: 'SUBSTITUTER_UNREACHABLE' });
      expect(failed(lines)).toHaveLength(1);
      expect(await valid([fx.paths.single])).toBe(false);
      mode = 'ok';
      requests = 0;
      expect(await s.substitute([fx.paths.single])).toBe(false);
      expect(requests).toBe(0);
      // After the period the path is asked again (a refused entry would be remembered for the negative TTL, an hour).
      now += 30_001;
      expect(await s.substitute([fx.paths.single])).toBe(true);
      expect(await valid([fx.paths.single])).toBe(true);
    } finally {
      mode = 'ok';
      await s.close();
    }
  });

  it('with nothing listening is skipped, and the next substituter answers', async () => {
    const closed = `http://127.0.0.1:${await freePort()}`;
    const { s, lines } = await watched([closed, url], () => 3_000_000);
    try {
      expect(await s.substitute([fx.paths.single])).toBe(true);
      expect(failed(lines)).toMatchObject([{ substituter: closed, code: 'SUBSTITUTER_UNREACHABLE' }]);
      expect(String(failed(lines)[0]!.err)).toContain('ECONNREFUSED');
    } finally {
      await s.close();
    }
  });
});
