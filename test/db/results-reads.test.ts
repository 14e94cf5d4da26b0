import { beforeAll, describe, expect, it } from 'vitest';
import { queuedBuildIds, readBuildsByIds, readJobsetShares, streamQueuedBuilds, type QueuedBuild } from '../../src/db/queue-reads.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

const NOW = 1_700_000_000;

describe('reads for the scheduler', () => {
  const db = useTestDatabase();
  let a: number;
  let b: number;
  let idle: number;
  let ids: number[];
  beforeAll(async () => {
    a = await createJobset(db.pool, 'nixpkgs', 'trunk', 300);
    b = await createJobset(db.pool, 'nixpkgs', 'staging', 50);
    idle = await createJobset(db.pool, 'other', 'main', 100);
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system, maxsilent, timeout, priority, globalpriority)
       select 0, 1000 + g, case when g % 2 = 0 then $1::int else $2::int end, 'job' || g, '/nix/store/d' || g || '.drv',
              'x86_64-linux', 60 + g, 600 + g, g % 5, g % 3
       from generate_series(1, 2500) g returning id`,
      [a, b],
    );
    ids = rows.map((r) => r.id).sort((x, y) => x - y);
  });

  it('readJobsetShares sums each jobset\'s step seconds of the last 24 hours', async () => {
    const buildA = await queueBuild(db.pool, a, '/nix/store/sa.drv');
    const buildB = await queueBuild(db.pool, b, '/nix/store/sb.drv');
    await db.pool.query(
      `insert into buildsteps (build, stepnr, type, drvpath, busy, status, starttime, stoptime, propagatedfrom) values
         ($1, 1, 0, 'x', 0, 0, $3 - 100, $3 - 40, null),     -- 60 s, counts
         ($1, 2, 1, 'x', 0, 0, $3 - 90000, $3 - 3600, null), -- started long ago, stopped within 24 h: 86400 s
         ($1, 3, 0, 'x', 0, 0, $3 - 90000, $3 - 86401, null),-- stopped more than 24 h ago
         ($1, 4, 0, 'x', 30, null, $3 - 10, null, null),     -- still running
         ($2, 1, 0, 'x', 0, 1, $3 - 30, $3 - 10, null),      -- 20 s
         ($2, 2, 0, 'x', 0, 1, null, null, $1),              -- propagated failure: no time of its own
         ($2, 3, 0, 'x', 0, 1, $3 - 500, $3 - 5, $1)         -- propagated with times: still not charged
      `,
      [buildA, buildB, NOW],
    );
    expect(await readJobsetShares(db.pool, NOW)).toEqual([
      { id: a, project: 'nixpkgs', name: 'trunk', schedulingShares: 300, recentSeconds: 60 + 86400 },
      { id: b, project: 'nixpkgs', name: 'staging', schedulingShares: 50, recentSeconds: 20 },
      { id: idle, project: 'other', name: 'main', schedulingShares: 100, recentSeconds: 0 },
    ]);
    // A smaller window.
    expect((await readJobsetShares(db.pool, NOW, 60)).map((j) => j.recentSeconds)).toEqual([60, 20, 0]);
    await db.pool.query('delete from builds where id = any($1)', [[buildA, buildB]]);
  });

  it('streamQueuedBuilds reads unfinished builds after an id, in order, in batches', async () => {
    await db.pool.query('update builds set finished = 1, buildstatus = 0, starttime = 1, stoptime = 1 where id = any($1)', [
      [ids[10], ids[11]],
    ]);
    const batches: QueuedBuild[][] = [];
    for await (const batch of streamQueuedBuilds(db.pool, { afterId: ids[4]!, batchSize: 1000 })) batches.push(batch);
    expect(batches.map((x) => x.length)).toEqual([1000, 1000, 493]);
    const all = batches.flat();
    expect(all.map((r) => r.id)).toEqual(ids.slice(5).filter((id) => id !== ids[10] && id !== ids[11]));
    const g = 6; // the 6th generated build (ids[5])
    expect(all[0]).toEqual({
      id: ids[5], jobsetId: a, project: 'nixpkgs', jobset: 'trunk', job: `job${g}`, drvPath: `/nix/store/d${g}.drv`,
      system: 'x86_64-linux', maxSilent: 60 + g, timeout: 600 + g, timestamp: 1000 + g, priority: g % 5, globalPriority: g % 3,
      finished: false,
    });
    expect(db.pool.idleCount).toBe(db.pool.totalCount);
    // Nothing after the last id.
    for await (const batch of streamQueuedBuilds(db.pool, { afterId: ids.at(-1)! })) expect(batch).toEqual([]);
  });

  it('queuedBuildIds maps every unfinished build to its global priority', async () => {
    await db.pool.query('update builds set globalpriority = 99 where id = $1', [ids[0]]);
    const queued = await queuedBuildIds(db.pool);
    expect(queued.size).toBe(2500 - 2);
    expect(queued.get(ids[0]!)).toBe(99);
    expect(queued.get(ids[1]!)).toBe(2 % 3);
    expect(queued.has(ids[10]!)).toBe(false);
  });

  it('readBuildsByIds reads any number of ids in chunks, skipping unknown ones', async () => {
    const wanted = [...ids].reverse().concat([ids[0]!, 999_999_999]);
    const rows = await readBuildsByIds(db.pool, wanted);
    expect(rows.map((r) => r.id)).toEqual(ids);
    expect(rows.find((r) => r.id === ids[10])).toMatchObject({ finished: true, job: 'job11', jobset: 'staging', jobsetId: b });
    expect(await readBuildsByIds(db.pool, [])).toEqual([]);
  });
});
