import { EventEmitter } from 'node:events';
import pg from 'pg';
import { DatabaseGaveUpError, RunnerLockedError, RunnerLockLostError } from '../errors/index.ts';
import { sql } from './sql.ts';

/**
 *   idle ──acquire──► held ◄──────────── standby (waiting for the lock to be free)
 *                     │  ▲
 *     connection lost │  │ re-taken
 *                     ▼  │
 *                  reconnecting ──► taken (another runner has it: stop, exit non-zero)
 *                               └─► gaveUp (unreachable past giveUpAfterMs: exit non-zero)
 * Any state may go to released (the owner stops).
 */
export type LockState = 'idle' | 'standby' | 'held' | 'reconnecting' | 'taken' | 'gaveUp' | 'released';

const ALLOWED: Record<LockState, readonly LockState[]> = {
  idle: ['held', 'standby', 'released'],
  standby: ['held', 'released'],
  held: ['reconnecting', 'released'],
  reconnecting: ['held', 'taken', 'gaveUp', 'released'],
  taken: ['released'],
  gaveUp: ['released'],
  released: [],
};

export interface RunnerLockOptions {
  url: string;
  /** How long the lock may stay lost to an unreachable database before the runner gives up. */
  giveUpAfterMs: number;
  /** Round trip on the lock connection this often, so a silently dead connection is noticed. */
  heartbeatMs?: number;
  /** Reconnect backoff (capped exponential with jitter). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Standby: how often to look at the lock. */
  standbyPollMs?: number;
  /**
   * Standby: take the lock only once it has been seen free for this long, so
   * an active runner re-taking its lock after a database restart (within
   * maxBackoffMs) wins over the standby.
   */
  takeoverAfterMs?: number;
}

/**
 * The database's queue-runner lock (a session-level advisory lock) as one
 * actor that owns its connection, heartbeat, reconnect backoff and the
 * standby's polling, in the style of a connection manager: every change is a
 * state transition, announced as `state` (next, previous, error?).
 *
 * The lock lives as long as its connection. When the connection is lost the
 * runner no longer knows whether it may write, so the owner must pause (the
 * state is `reconnecting`) until the lock is re-taken (`held`). If another
 * runner took it meanwhile (`taken`) or the database stays away past
 * giveUpAfterMs (`gaveUp`), the owner stops and exits non-zero.
 */
export class RunnerLock extends EventEmitter {
  private client: pg.Client | null = null;
  private current: LockState = 'idle';
  private timer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private lostAt = 0;
  private freeSince = 0;
  /** The backend pid of the session that held the lock last: after a loss it may hold it a while longer. */
  private lastPid: number | null = null;
  /** Why the lock ended for good (taken or gaveUp). */
  failure: Error | null = null;

  constructor(private readonly o: RunnerLockOptions) {
    super();
  }

  get state(): LockState {
    return this.current;
  }

  /** Takes the lock now; throws RunnerLockedError if another runner holds it (or the connection error). */
  async acquire(): Promise<void> {
    const client = await this.connect();
    let locked = false;
    try {
      locked = await this.tryLock(client);
    } finally {
      if (!locked) await client.end().catch(() => {});
    }
    if (!locked) throw new RunnerLockedError('another queue runner is already working on this database');
    if (this.current === 'released') return void client.end().catch(() => {});
    this.hold(client);
  }

  /**
   * Hot standby: waits, polling, until the lock has been free for
   * takeoverAfterMs, then takes it. Resolves true once held, false if
   * released first. An unreachable database is waited out.
   */
  standby(): Promise<boolean> {
    this.to('standby');
    return new Promise((resolve) => {
      const on = (s: LockState) => {
        if (s !== 'held' && s !== 'released') return;
        this.off('state', on);
        resolve(s === 'held');
      };
      this.on('state', on);
      void this.poll();
    });
  }

  /** Resolves while (or as soon as) the lock is held; rejects once it never will be again. */
  whenHeld(): Promise<void> {
    if (this.current === 'held') return Promise.resolve();
    if (this.terminal()) return Promise.reject(this.failure ?? new Error(`runner lock ${this.current}`));
    return new Promise((resolve, reject) => {
      const on = (s: LockState) => {
        if (s === 'held') resolve();
        else if (this.terminal()) reject(this.failure ?? new Error(`runner lock ${s}`));
        else return;
        this.off('state', on);
      };
      this.on('state', on);
    });
  }

  async release(): Promise<void> {
    if (this.current === 'released') return;
    this.clearTimer();
    const c = this.client;
    this.client = null;
    this.to('released');
    if (c) await c.end().catch(() => {});
  }

  private terminal(): boolean {
    return this.current === 'taken' || this.current === 'gaveUp' || this.current === 'released';
  }

  private to(next: LockState, err?: Error): void {
    if (!ALLOWED[this.current].includes(next)) throw new Error(`invalid runner lock transition ${this.current} → ${next}`);
    const prev = this.current;
    this.current = next;
    if (next === 'taken' || next === 'gaveUp') this.failure = err ?? null;
    this.emit('state', next, prev, err);
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.o.url,
      application_name: 'hydrant-lock',
      keepAlive: true,
      connectionTimeoutMillis: Math.max(1000, this.heartbeatMs),
    });
    // Until the client has a role, a dead connection just ends it.
    client.on('error', () => {});
    await client.connect();
    return client;
  }

  private async tryLock(client: pg.Client): Promise<boolean> {
    const { rows } = await client.query<{ locked: boolean }>(sql('runner/try-lock'));
    return rows[0]?.locked === true;
  }

  private get heartbeatMs(): number {
    return this.o.heartbeatMs ?? 5000;
  }

  /** The pid of the backend holding the lock, or null when it is free. */
  private async holder(client: pg.Client): Promise<number | null> {
    const { rows } = await client.query<{ pid: number }>(sql('runner/lock-holder'));
    return rows[0]?.pid ?? null;
  }

  private hold(client: pg.Client): void {
    this.client = client;
    this.lastPid = (client as unknown as { processID: number | null }).processID ?? null;
    client.removeAllListeners('error');
    client.removeAllListeners('end');
    client.on('error', (err) => this.lost(client, err));
    client.on('end', () => this.lost(client, new Error('lock connection ended')));
    this.attempt = 0;
    this.to('held');
    this.beat();
  }

  private beat(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      const client = this.client;
      if (this.current !== 'held' || !client) return;
      let timeout: NodeJS.Timeout | undefined;
      const dead = new Promise<never>((_, reject) => {
        timeout = setTimeout(() => reject(new Error('lock connection heartbeat timed out')), this.heartbeatMs);
      });
      Promise.race([client.query(sql('runner/heartbeat')), dead]).then(
        () => {
          clearTimeout(timeout);
          if (this.current === 'held' && this.client === client) this.beat();
        },
        (err: Error) => {
          clearTimeout(timeout);
          this.lost(client, err);
        },
      );
    }, this.heartbeatMs);
    this.timer.unref();
  }

  private lost(client: pg.Client, err: Error): void {
    if (this.client !== client || this.current !== 'held') return;
    this.clearTimer();
    this.client = null;
    drop(client);
    this.lostAt = Date.now();
    this.to('reconnecting', err);
    this.retryLater();
  }

  private retryLater(): void {
    const min = this.o.minBackoffMs ?? 100;
    const max = this.o.maxBackoffMs ?? 1000;
    const base = Math.min(max, min * 2 ** this.attempt++);
    this.timer = setTimeout(() => void this.reconnect(), base / 2 + Math.random() * (base / 2));
  }

  private async reconnect(): Promise<void> {
    this.timer = null;
    if (this.current !== 'reconnecting') return;
    let client: pg.Client | null = null;
    try {
      client = await this.connect();
      const locked = await this.tryLock(client);
      if (this.current !== 'reconnecting') return drop(client);
      if (locked) return this.hold(client);
      // Our own previous session may still hold it: its backend has not yet
      // noticed the connection we gave up for dead (a hung server). End it and retry.
      const pid = await this.holder(client);
      if (pid !== null && pid === this.lastPid) {
        await client.query(sql('runner/terminate-session'), [pid]).catch(() => {});
        drop(client);
        if ((this.current as LockState) === 'reconnecting') this.retryOrGiveUp(new Error(`the lock is still held by this runner's previous session (pid ${pid})`));
        return;
      }
      drop(client);
      if ((this.current as LockState) !== 'reconnecting') return;
      this.to('taken', new RunnerLockLostError('another queue runner took the runner lock while this one was disconnected'));
    } catch (err) {
      if (client) drop(client);
      if (this.current !== 'reconnecting') return;
      this.retryOrGiveUp(err as Error);
    }
  }

  private retryOrGiveUp(err: Error): void {
    if (Date.now() - this.lostAt < this.o.giveUpAfterMs) return this.retryLater();
    const s = Math.round(this.o.giveUpAfterMs / 1000);
    this.to('gaveUp', new DatabaseGaveUpError(`the database stayed unreachable for ${s} s (dbGiveUpAfterInS): ${err.message}`, { cause: err }));
  }

  private async poll(): Promise<void> {
    this.timer = null;
    if (this.current !== 'standby') return;
    try {
      if (!this.client) {
        const c = await this.connect();
        if ((this.current as LockState) !== 'standby') return drop(c);
        c.on('end', () => {
          if (this.client === c) this.client = null;
        });
        this.client = c;
        this.freeSince = 0;
      }
      const client = this.client;
      const free = (await this.holder(client)) === null;
      const now = Date.now();
      if (!free) this.freeSince = 0;
      else if (this.freeSince === 0) this.freeSince = now;
      else if (now - this.freeSince >= (this.o.takeoverAfterMs ?? 3000)) {
        if ((this.current as LockState) !== 'standby') return;
        if (await this.tryLock(client)) {
          if ((this.current as LockState) !== 'standby') return;
          return this.hold(client);
        }
        this.freeSince = 0;
      }
    } catch {
      // The database is away: keep waiting; a fresh connection must see the lock free anew.
      if (this.client) drop(this.client);
      this.client = null;
      this.freeSince = 0;
    }
    if (this.current === 'standby') this.timer = setTimeout(() => void this.poll(), this.o.standbyPollMs ?? 1000);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** Ends a client without waiting: its socket may be dead. */
function drop(client: pg.Client): void {
  client.removeAllListeners('end');
  client.on('error', () => {});
  client.end().catch(() => {});
}
