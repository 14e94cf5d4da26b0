import { EventEmitter } from 'node:events';
import pg from 'pg';
import { RunnerLockedError } from '../errors/index.ts';
import { sql } from './sql.ts';

/**
 * Holds the database's queue-runner lock on a connection of its own for as
 * long as the runner lives. If that connection is lost the lock is gone too
 * and another runner may start, so the owner must stop dispatching: it
 * emits `lost`.
 */
export class RunnerLock extends EventEmitter {
  private constructor(private readonly client: pg.Client) {
    super();
  }

  static async acquire(url: string): Promise<RunnerLock> {
    const client = new pg.Client({ connectionString: url, application_name: 'hydrant-lock' });
    await client.connect();
    const { rows } = await client.query<{ locked: boolean }>(sql('runner/try-lock'));
    if (!rows[0]?.locked) {
      await client.end();
      throw new RunnerLockedError('another queue runner is already working on this database');
    }
    const lock = new RunnerLock(client);
    let released = false;
    const lost = (err?: Error) => {
      if (released) return;
      released = true;
      lock.emit('lost', err ?? new Error('lock connection ended'));
    };
    client.on('error', lost);
    client.on('end', () => lost());
    lock.release = async () => {
      released = true;
      await client.end().catch(() => {});
    };
    return lock;
  }

  release: () => Promise<void> = async () => {};
}
