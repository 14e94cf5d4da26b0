import { EventEmitter } from 'node:events';
import pg from 'pg';
import { DatabaseGaveUpError, RunnerLockedError, RunnerLockLostError } from '../errors/index.ts';
import { sql } from './sql.ts';
import { createActor, type Actor } from 'xstate';
import { runnerLockMachine, type RunnerLockEvent, type RunnerLockState } from '../machines/index.ts';

/**
 * The lock's states; the transitions between them are src/machines/runner-lock-machine.ts.
 */
export type LockState = RunnerLockState;

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
 * standby's polling, in the style of a connection manager. Its state is a
 * live actor of src/machines/runner-lock-machine.ts, the only place that
 * decides transitions and which effect (heartbeat, reconnect, poll, stop the
 * timer) runs on entering or leaving a state; this class does the I/O of
 * those effects and sends the events their outcomes mean. Every change is
 * announced as `state` (next, previous, error?).
 *
 * The lock lives as long as its connection. When the connection is lost the
 * runner no longer knows whether it may write, so the owner must pause (the
 * state is `reconnecting`) until the lock is re-taken (`held`). If another
 * runner took it meanwhile (`taken`) or the database stays away past
 * giveUpAfterMs (`gaveUp`), the owner stops and exits non-zero.
 */
export class RunnerLock extends EventEmitter {
  private client: pg.Client | null = null;
  /** Effects the last event's transition asked for, run once its state is current. */
  private effects: (() => void)[] = [];
  private readonly actor: Actor<typeof runnerLockMachine> = createActor(
    runnerLockMachine.provide({
      actions: {
        startHeartbeat: () => void this.effects.push(() => this.beat()),
        scheduleReconnect: () => void this.effects.push(() => this.retryLater()),
        pollLock: () => void this.effects.push(() => void this.poll()),
        stopTimer: () => void this.effects.push(() => this.clearTimer()),
      },
    }),
  ).start();
  private timer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private lostAt = 0;
  private freeSince = 0;
  /** The backend pid of the session that held the lock last: after a loss it may hold it a while longer. */
  private lastPid: number | null = null;

  constructor(private readonly o: RunnerLockOptions) {
    super();
  }

  get state(): LockState {
    return this.actor.getSnapshot().value;
  }

  /** Why the lock ended for good (taken or gaveUp). */
  get failure(): Error | null {
    return this.actor.getSnapshot().context.failure;
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
    if (this.state === 'released') return void client.end().catch(() => {});
    this.hold(client, 'ACQUIRED');
  }

  /**
   * Hot standby: waits, polling, until the lock has been free for
   * takeoverAfterMs, then takes it. Resolves true once held, false if
   * released first. An unreachable database is waited out.
   */
  standby(): Promise<boolean> {
    this.send({ type: 'STANDBY' }); // starts polling
    return new Promise((resolve) => {
      const on = (s: LockState) => {
        if (s !== 'held' && s !== 'released') return;
        this.off('state', on);
        resolve(s === 'held');
      };
      this.on('state', on);
    });
  }

  /** Resolves while (or as soon as) the lock is held; rejects once it never will be again. */
  whenHeld(): Promise<void> {
    if (this.state === 'held') return Promise.resolve();
    if (this.terminal()) return Promise.reject(this.failure ?? new Error(`runner lock ${this.state}`));
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
    if (this.state === 'released') return;
    const c = this.client;
    this.client = null;
    this.send({ type: 'RELEASE' }); // stops the timer
    if (c) await c.end().catch(() => {});
  }

  private terminal(): boolean {
    const s = this.state;
    return s === 'taken' || s === 'gaveUp' || s === 'released';
  }

  /**
   * Sends `event` to the state actor (throws if the definition refuses it
   * here), announces a change of state, then runs the effects the
   * transition asked for (stopping the old state's timer before starting the
   * new state's work).
   */
  private send(event: RunnerLockEvent): void {
    const before = this.actor.getSnapshot();
    if (!before.can(event)) throw new Error(`invalid runner lock event ${event.type} in ${before.value}`);
    this.effects = [];
    this.actor.send(event);
    const effects = this.effects;
    this.effects = [];
    const next = this.actor.getSnapshot().value;
    if (next !== before.value) this.emit('state', next, before.value, event.error);
    for (const effect of effects) effect();
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

  private hold(client: pg.Client, event: 'ACQUIRED' | 'RETAKEN' | 'TOOK_OVER'): void {
    this.client = client;
    this.lastPid = (client as unknown as { processID: number | null }).processID ?? null;
    client.removeAllListeners('error');
    client.removeAllListeners('end');
    client.on('error', (err) => this.lost(client, err));
    client.on('end', () => this.lost(client, new Error('lock connection ended')));
    this.attempt = 0;
    this.send({ type: event }); // starts the heartbeat
  }

  private beat(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      const client = this.client;
      if (this.state !== 'held' || !client) return;
      let timeout: NodeJS.Timeout | undefined;
      const dead = new Promise<never>((_, reject) => {
        timeout = setTimeout(() => reject(new Error('lock connection heartbeat timed out')), this.heartbeatMs);
      });
      Promise.race([client.query(sql('runner/heartbeat')), dead]).then(
        () => {
          clearTimeout(timeout);
          if (this.state === 'held' && this.client === client) this.beat();
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
    if (this.client !== client || this.state !== 'held') return;
    this.client = null;
    drop(client);
    this.lostAt = Date.now();
    this.send({ type: 'LOST', error: err }); // stops the heartbeat, schedules the first attempt
  }

  private retryLater(): void {
    const min = this.o.minBackoffMs ?? 100;
    const max = this.o.maxBackoffMs ?? 1000;
    const base = Math.min(max, min * 2 ** this.attempt++);
    this.timer = setTimeout(() => void this.reconnect(), base / 2 + Math.random() * (base / 2));
  }

  private async reconnect(): Promise<void> {
    this.timer = null;
    if (this.state !== 'reconnecting') return;
    let client: pg.Client | null = null;
    try {
      client = await this.connect();
      const locked = await this.tryLock(client);
      if (this.state !== 'reconnecting') return drop(client);
      if (locked) return this.hold(client, 'RETAKEN');
      // Our own previous session may still hold it: its backend has not yet
      // noticed the connection we gave up for dead (a hung server). End it and retry.
      const pid = await this.holder(client);
      if (pid !== null && pid === this.lastPid) {
        await client.query(sql('runner/terminate-session'), [pid]).catch(() => {});
        drop(client);
        if (this.state === 'reconnecting') this.retryOrGiveUp(new Error(`the lock is still held by this runner's previous session (pid ${pid})`));
        return;
      }
      drop(client);
      if (this.state !== 'reconnecting') return;
      this.send({ type: 'TAKEN', error: new RunnerLockLostError('another queue runner took the runner lock while this one was disconnected') });
    } catch (err) {
      if (client) drop(client);
      if (this.state !== 'reconnecting') return;
      this.retryOrGiveUp(err as Error);
    }
  }

  private retryOrGiveUp(err: Error): void {
    if (Date.now() - this.lostAt < this.o.giveUpAfterMs) return this.send({ type: 'RETRY', error: err }); // schedules the next attempt
    const s = Math.round(this.o.giveUpAfterMs / 1000);
    this.send({ type: 'GAVE_UP', error: new DatabaseGaveUpError(`the database stayed unreachable for ${s} s (dbGiveUpAfterInS): ${err.message}`, { cause: err }) });
  }

  private async poll(): Promise<void> {
    this.timer = null;
    if (this.state !== 'standby') return;
    try {
      if (!this.client) {
        const c = await this.connect();
        if (this.state !== 'standby') return drop(c);
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
        if (this.state !== 'standby') return;
        if (await this.tryLock(client)) {
          if (this.state !== 'standby') return;
          return this.hold(client, 'TOOK_OVER');
        }
        this.freeSince = 0;
      }
    } catch {
      // The database is away: keep waiting; a fresh connection must see the lock free anew.
      if (this.client) drop(this.client);
      this.client = null;
      this.freeSince = 0;
    }
    if (this.state === 'standby') this.timer = setTimeout(() => void this.poll(), this.o.standbyPollMs ?? 1000);
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
