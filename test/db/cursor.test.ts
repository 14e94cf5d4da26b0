import { beforeAll, describe, expect, it } from 'vitest';
import { streamRows } from '../../src/db/cursor.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';

describe('streamRows', () => {
  const db = useTestDatabase();
  beforeAll(async () => {
    const jobset = await createJobset(db.pool);
    await db.pool.query(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
       select 0, 1, $1, 'j' || g, '/nix/store/' || g || '.drv', 'x86_64-linux' from generate_series(1, 2500) g`,
      [jobset],
    );
  });

  it('reads unfinished builds in bounded batches, in order, and returns the connection', async () => {
    const sizes: number[] = [];
    const ids: number[] = [];
    for await (const batch of streamRows<{ id: number }>(db.pool, 'select id from builds where finished = 0 order by id', [], 1000)) {
      sizes.push(batch.length);
      ids.push(...batch.map((r) => r.id));
    }
    expect(sizes).toEqual([1000, 1000, 500]);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(new Set(ids).size).toBe(2500);
    expect(db.pool.idleCount).toBe(db.pool.totalCount);
  });

  it('releases the connection when the reader stops early', async () => {
    for await (const batch of streamRows(db.pool, 'select id from builds', [], 10)) {
      expect(batch).toHaveLength(10);
      break;
    }
    expect(db.pool.idleCount).toBe(db.pool.totalCount);
  });
});
