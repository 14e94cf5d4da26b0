import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_CHANNELS } from '../../src/db/channels.ts';
import { NotificationListener, type Notification } from '../../src/db/listener.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

function collect(listener: NotificationListener): { seen: Notification[]; next(channel: string): Promise<Notification> } {
  const seen: Notification[] = [];
  const waiters: [string, (n: Notification) => void][] = [];
  listener.on('notification', (n: Notification) => {
    seen.push(n);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i]![0] === n.channel) waiters.splice(i, 1)[0]![1](n);
    }
  });
  return {
    seen,
    next: (channel) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${channel} notification`)), 5000);
        waiters.push([channel, (n) => (clearTimeout(t), resolve(n))]);
      }),
  };
}

describe('NotificationListener on Hydra triggers', () => {
  let db: TestDatabase;
  let listener: NotificationListener;
  let jobsetId: number;
  beforeAll(async () => {
    db = await createTestDatabase();
    jobsetId = await createJobset(db.pool);
    listener = new NotificationListener({ url: db.url, channels: HYDRA_CHANNELS, minBackoffMs: 20, maxBackoffMs: 200 });
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
    await db.drop();
  });

  it('receives what Hydra triggers send for bumps, cancels, restarts, deletes and share changes', async () => {
    const c = collect(listener);
    const id = await queueBuild(db.pool, jobsetId, '/nix/store/aaaa-x.drv');
    let p = c.next('builds_bumped');
    await db.pool.query('update builds set globalpriority = 10 where id = $1', [id]);
    await p;
    p = c.next('builds_cancelled');
    await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1', [id]);
    await p;
    p = c.next('builds_restarted');
    await db.pool.query('update builds set finished = 0 where id = $1', [id]);
    await p;
    p = c.next('jobset_shares_changed');
    await db.pool.query('update jobsets set schedulingshares = 7 where id = $1', [jobsetId]);
    await p;
    p = c.next('builds_deleted');
    await db.pool.query('delete from builds where id = $1', [id]);
    await p;
    p = c.next('builds_added');
    await db.pool.query("notify builds_added, 'hint'");
    expect((await p).payload).toBe('hint');
    expect(c.seen.map((n) => n.channel)).toEqual([
      'builds_bumped', 'builds_cancelled', 'builds_restarted', 'jobset_shares_changed', 'builds_deleted', 'builds_added',
    ]);
  });

  it('reconnects after its connection is killed and says so, so the owner can re-poll', async () => {
    const c = collect(listener);
    const reconnected = new Promise<void>((r) => listener.once('reconnected', () => r()));
    const killed = await db.pool.query(
      "select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = 'hydrant-listen' and datname = current_database()",
    );
    expect(killed.rowCount).toBe(1);
    await reconnected;
    expect(listener.status).toBe('listening');
    const p = c.next('builds_added');
    await db.pool.query("notify builds_added, 'after'");
    expect((await p).payload).toBe('after');
  });
});
