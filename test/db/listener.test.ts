import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_CHANNELS } from '../../src/db/channels.ts';
import { NotificationListener, type Notification } from '../../src/db/listener.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { queueBuild, useJobset } from '../helpers/hydra-rows.ts';

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
  const db = useTestDatabase();
  let listener: NotificationListener;
  const jobset = useJobset(db);
  beforeAll(async () => {
    listener = new NotificationListener({ url: db.url, channels: HYDRA_CHANNELS, minBackoffMs: 20, maxBackoffMs: 200 });
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
  });

  /** Runs `sql` and resolves with the notification `c` then sees on `channel`. */
  async function notified(c: ReturnType<typeof collect>, channel: string, sql: string, values: unknown[] = []): Promise<Notification> {
    const p = c.next(channel);
    await db.pool.query(sql, values);
    return p;
  }

  it('receives what Hydra triggers send for bumps, cancels, restarts, deletes and share changes', async () => {
    const c = collect(listener);
    const id = await queueBuild(db.pool, jobset.id, '/nix/store/aaaa-x.drv');
    await notified(c, 'builds_bumped', 'update builds set globalpriority = 10 where id = $1', [id]);
    await notified(c, 'builds_cancelled', 'update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1', [id]);
    await notified(c, 'builds_restarted', 'update builds set finished = 0 where id = $1', [id]);
    await notified(c, 'jobset_shares_changed', 'update jobsets set schedulingshares = 7 where id = $1', [jobset.id]);
    await notified(c, 'builds_deleted', 'delete from builds where id = $1', [id]);
    expect((await notified(c, 'builds_added', "notify builds_added, 'hint'")).payload).toBe('hint');
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
    expect((await notified(c, 'builds_added', "notify builds_added, 'after'")).payload).toBe('after');
  });
});
