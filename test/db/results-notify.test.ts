import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotificationListener, type Notification } from '../../src/db/listener.ts';
import {
  buildFinishedPayloads,
  MAX_NOTIFY_PAYLOAD_BYTES,
  notifyBuildsFinished,
  notifyBuildStarted,
} from '../../src/db/notify.ts';
import { withTransaction } from '../../src/db/pool.ts';
import { finishStep, startStep } from '../../src/db/step-rows.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

const bytes = (s: string) => Buffer.byteLength(s, 'utf8');

describe('buildFinishedPayloads', () => {
  it('is just the id when nothing else finished', () => {
    expect(buildFinishedPayloads(42, [])).toEqual(['42']);
    expect(buildFinishedPayloads(42, [7, 9])).toEqual(['42\t7\t9']);
  });

  it('splits long lists, repeating the first id, each payload < 8000 bytes', () => {
    const deps = Array.from({ length: 20_000 }, (_, i) => 1_000_000 + i);
    const payloads = buildFinishedPayloads(123456, deps);
    expect(payloads.length).toBeGreaterThan(1);
    for (const p of payloads) {
      expect(bytes(p)).toBeLessThan(8000);
      expect(p.split('\t')[0]).toBe('123456');
    }
    expect(payloads.flatMap((p) => p.split('\t').slice(1).map(Number))).toEqual(deps);
    // Chunks are full: a greedy split leaves no room for another id.
    for (const p of payloads.slice(0, -1)) expect(bytes(p) + 1 + 7).toBeGreaterThan(MAX_NOTIFY_PAYLOAD_BYTES);
  });

  it('property: every dependent exactly once, each chunk < 8000 bytes and headed by the first id', () => {
    const id = fc.integer({ min: 1, max: 2_147_483_647 });
    fc.assert(
      fc.property(id, fc.array(id, { maxLength: 5000 }), fc.integer({ min: 21, max: 7999 }), (first, dependents, limit) => {
        for (const maxBytes of [MAX_NOTIFY_PAYLOAD_BYTES, limit]) {
          const payloads = maxBytes === MAX_NOTIFY_PAYLOAD_BYTES
            ? buildFinishedPayloads(first, dependents)
            : buildFinishedPayloads(first, dependents, maxBytes);
          const expected = [...new Set(dependents)].filter((d) => d !== first);
          const seen: number[] = [];
          for (const p of payloads) {
            expect(bytes(p)).toBeLessThan(8000);
            expect(bytes(p)).toBeLessThanOrEqual(maxBytes);
            const [head, ...rest] = p.split('\t');
            expect(head).toBe(String(first));
            // Only a list with no dependents yields a payload of just the head.
            if (expected.length > 0) expect(rest.length).toBeGreaterThan(0);
            seen.push(...rest.map(Number));
          }
          expect(seen).toEqual(expected); // each exactly once, in order
          if (expected.length === 0) expect(payloads).toEqual([String(first)]);
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('NOTIFYs received by a listener', () => {
  const db = useTestDatabase();
  let listener: NotificationListener;
  const seen: Notification[] = [];
  beforeAll(async () => {
    listener = new NotificationListener({
      url: db.url, channels: ['build_started', 'build_finished', 'step_started', 'step_finished'], minBackoffMs: 20, maxBackoffMs: 200,
    });
    listener.on('notification', (n: Notification) => seen.push(n));
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
  });

  /**
   * Every notification committed so far, without the marker this sends after
   * them: PostgreSQL delivers a session's notifications in commit order, so
   * once the marker is heard nothing sent before it is still on its way.
   */
  async function allHeard(): Promise<Notification[]> {
    const marker = `marker-${Math.random()}`;
    await db.pool.query(`select pg_notify('build_started', $1)`, [marker]);
    const deadline = Date.now() + 60_000; // a hang, not a slow machine
    while (!seen.some((n) => n.payload === marker)) {
      if (Date.now() > deadline) throw new Error('notifications did not arrive');
      await new Promise((r) => setTimeout(r, 10));
    }
    return seen.filter((n) => n.payload !== marker);
  }

  it('step_started, step_finished and build_started carry Hydra\'s payloads, only on commit', async () => {
    seen.length = 0;
    const jobsetId = await createJobset(db.pool);
    const build = await queueBuild(db.pool, jobsetId, '/nix/store/aaaa-x.drv');
    // Rolled back: nothing is heard.
    await withTransaction(db.pool, async (c) => {
      await startStep(c, { buildId: build, drvPath: '/nix/store/aaaa-x.drv', system: null, machine: '', startTime: 1, busy: 1, type: 0, outputs: [] });
      throw new Error('roll back');
    }).catch(() => {});
    await withTransaction(db.pool, async (c) => {
      await notifyBuildStarted(c, build);
      const nr = await startStep(c, { buildId: build, drvPath: '/nix/store/aaaa-x.drv', system: null, machine: 'm', startTime: 1, busy: 1, type: 0, outputs: [] });
      await finishStep(c, { buildId: build, stepnr: nr, status: 0, errorMsg: null, startTime: 1, stopTime: 2, machine: 'm',
        overhead: null, timesBuilt: 1, isNonDeterministic: false, logFile: '/logs/aa/aa-x.drv' });
    });
    expect(await allHeard()).toEqual([
      { channel: 'build_started', payload: String(build) },
      { channel: 'step_started', payload: `${build}\t1` },
      { channel: 'step_finished', payload: `${build}\t1\t/logs/aa/aa-x.drv` },
    ]);
  });

  it('build_finished for 5,000 dependents arrives split, each < 8000 bytes, each starting with the first id', async () => {
    seen.length = 0;
    const deps = Array.from({ length: 5000 }, (_, i) => 10_000_000 + i);
    const expectedChunks = buildFinishedPayloads(77, deps).length;
    expect(expectedChunks).toBeGreaterThan(5);
    await withTransaction(db.pool, (c) => notifyBuildsFinished(c, [77, ...deps]));
    const heard = await allHeard();
    expect(heard).toHaveLength(expectedChunks);
    const got: number[] = [];
    for (const n of heard) {
      expect(n.channel).toBe('build_finished');
      expect(bytes(n.payload)).toBeLessThan(8000);
      const [head, ...rest] = n.payload.split('\t');
      expect(head).toBe('77');
      got.push(...rest.map(Number));
    }
    expect(got).toEqual(deps);
  });

  it('build_finished with no dependents is the id alone; an empty list sends nothing', async () => {
    seen.length = 0;
    await withTransaction(db.pool, async (c) => {
      await notifyBuildsFinished(c, []);
      await notifyBuildsFinished(c, [5]);
    });
    expect(await allHeard()).toEqual([{ channel: 'build_finished', payload: '5' }]);
  });
});
