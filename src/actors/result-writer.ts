import type { Logger } from '../util/logger.ts';
import type { StepBusyCode } from '../db/status.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import { isConnectionError } from '../db/errors.ts';
import { unixNow } from './builder-port.ts';
import { Coalescer } from './coalescer.ts';
import type { Clock } from './model.ts';

/**
 * Open while this runner may write to the database: it holds the runner lock
 * (src/db/runner-lock.ts). While the database is away the lock is being
 * re-taken and writes wait.
 */
export interface WriteGate {
  /** Resolves while (or once) writes may go ahead; rejects once they never will (lock taken, given up). */
  whenOpen(): Promise<void>;
}

export type StepStart = Parameters<SchedulerDb['stepsStarted']>[0][number];

/** An attempt's BuildSteps row as the writer sees it. */
export interface AttemptRow {
  /** The build whose BuildSteps row records this attempt. */
  readonly buildId: number;
  /** Resolves to the row's stepnr once written (null if the write failed). */
  readonly row: Promise<number | null>;
  /** Latest progress report (BuildSteps.busy). */
  busy: StepBusyCode;
  /** The busy value last written to the row, and whether a write is scheduled. */
  busyWritten: StepBusyCode;
  busyWriteScheduled: boolean;
}

/**
 * How long a phase must last before BuildSteps.busy records it: a short
 * step's phases pass in milliseconds, and writing each would cost more
 * database round trips than the step itself.
 */
export const BUSY_WRITE_DELAY_MS = 500;

/** Start rows per transaction. */
const START_BATCH = 500;

/** Successes per transaction. */
const SUCCESS_BATCH = 50;

export type StepSuccess = Parameters<SchedulerDb['stepSucceeded']>[0];

export interface ResultWriterOptions<A extends AttemptRow> {
  db: SchedulerDb;
  log: Logger;
  clock: Clock;
  /** Writes wait for it to open (the runner holds its lock); without it they go at once. */
  gate?: WriteGate;
  /**
   * Writes waiting or in flight at which `backpressure(true)` is called;
   * `backpressure(false)` follows once they are down to three quarters of it
   * (hysteresis: dispatch does not flap on every write at the mark).
   */
  maxPendingWrites?: number;
  backpressure(on: boolean): void;
  /** Whether the attempt still runs: once its result is in, the result's write sets busy itself. */
  running(a: A): boolean;
}

/**
 * Every write of a step's life, and how it survives the database going away:
 * start rows batched per dispatch round, phases debounced, results retried
 * while the database is unreachable and held behind the write gate, with
 * backpressure on dispatch. It knows which rows are this runner's live
 * attempts, so that after an outage it can abort the others.
 */
export class ResultWriter<A extends AttemptRow> {
  /**
   * Writes counted from the moment they exist, not from the moment they
   * reach the database: a start row from its assignment (it waits for the
   * end of the dispatch round, then for its batch), a result from its
   * arrival (it may wait for its start row first).
   */
  private writes = 0;
  private held = false;
  /** Backpressure: how often dispatch was held, and the most writes pending at once. */
  readonly pressure = { holds: 0, maxPending: 0 };
  private stopping = false;
  private stopped!: () => void;
  /** Resolves when stopping begins: writes waiting for the gate then give up. */
  private readonly stopWait = new Promise<void>((r) => (this.stopped = r));
  private readonly inflight = new Set<Promise<unknown>>();
  /** BuildSteps rows of this runner's attempts whose closing write has not landed: busy on purpose. */
  private readonly liveRows = new Map<string, { buildId: number; stepnr: number }>();
  private pendingStarts: { start: StepStart; resolve: (nr: number | null) => void }[] = [];

  /**
   * Successes share transactions: one goes at once, those arriving while four
   * are being written go together in the next (one commit, one WAL flush,
   * one NOTIFY for all), so under load the number of commits follows the
   * database's pace rather than the builders'. A transaction's statements
   * run one after another on one connection, so batches stay small and four
   * run at once (the pool's other connections serve start rows and reads).
   */
  private readonly successes: Coalescer<StepSuccess, number[] | { failed: unknown }>;

  constructor(private readonly o: ResultWriterOptions<A>) {
    this.successes = new Coalescer(
      async (list) => {
        try {
          return await o.db.stepsSucceeded(list);
        } catch (err) {
          if (list.length === 1 || isConnectionError(err)) throw err;
          // One bad result must not fail the others (their retries would batch it with them again): each alone.
          return Promise.all(list.map((a) => o.db.stepsSucceeded([a]).then((r) => r[0]!, (e: unknown) => ({ failed: e }))));
        }
      },
      { maxBatch: SUCCESS_BATCH, maxInFlight: 4, lingerMs: 0 },
    );
  }

  /** A step's success rows (under `closing`), sharing a transaction with the successes that arrive with it; returns the builds that ended. */
  async succeeded(a: StepSuccess): Promise<number[]> {
    const r = await this.successes.load(a);
    if ('failed' in r) throw r.failed;
    return r;
  }

  /**
   * Records an attempt's start. The row is written right after the current
   * dispatch round, with the other starts of the round, in one transaction;
   * it stays live (busy on purpose) until a `closing` write ends it.
   */
  started(start: StepStart): Promise<number | null> {
    this.enter(1);
    return new Promise((resolve) => {
      if (this.pendingStarts.length === 0) setImmediate(() => this.flushStarts());
      this.pendingStarts.push({ start, resolve });
    });
  }

  private flushStarts(): void {
    const all = this.pendingStarts;
    this.pendingStarts = [];
    for (let i = 0; i < all.length; i += START_BATCH) {
      const batch = all.slice(i, i + START_BATCH);
      // Counted since `started`: one pending write per row, however they are batched.
      const write = this.attempt(() => this.o.db.stepsStarted(batch.map((b) => b.start)))
        .finally(() => this.leave(batch.length))
        .then(
        (nrs) =>
          batch.forEach((b, k) => {
            const nr = nrs[k] ?? null;
            if (nr !== null) this.liveRows.set(`${b.start.buildId}:${nr}`, { buildId: b.start.buildId, stepnr: nr });
            b.resolve(nr);
          }),
        (err: unknown) => {
          this.o.log.error({ err: String(err), steps: batch.length }, 'could not record step starts');
          for (const b of batch) b.resolve(null);
        },
      );
      this.track(write);
    }
  }

  /** The attempt's phase changed (a.busy): written once it has lasted BUSY_WRITE_DELAY_MS. */
  busyChanged(a: A): void {
    if (a.busyWriteScheduled) return; // the scheduled write takes the latest phase
    a.busyWriteScheduled = true;
    setTimeout(() => {
      a.busyWriteScheduled = false;
      if (!this.o.running(a) || a.busy === a.busyWritten) return;
      const value = a.busy;
      a.busyWritten = value;
      void a.row.then((nr) => (nr === null ? undefined : this.o.db.stepBusy(a.buildId, nr, value))).catch(() => {});
    }, BUSY_WRITE_DELAY_MS).unref();
  }

  /**
   * Retries a result write while the database is unreachable: the result is
   * real (outputs are in the store) and must not be lost. Other errors are
   * retried a few times, then given up (a restart recomputes from the store).
   */
  async persist<T>(write: () => Promise<T>): Promise<T> {
    this.enter(1);
    try {
      return await this.attempt(write);
    } finally {
      this.leave(1);
    }
  }

  private async attempt<T>(write: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      await this.gateOpen();
      try {
        return await write();
      } catch (err) {
        const lost = isConnectionError(err);
        if (this.stopping || (!lost && attempt >= 3)) throw err;
        // Short: while the database is away the gate holds writes back, not this delay.
        const delay = Math.min(5_000, 100 * 2 ** attempt);
        this.o.log.warn({ err: String((err as Error)?.message ?? err), attempt, delayMs: delay }, 'result write failed; retrying');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /** `n` more writes pending: dispatch is held once they reach the high mark. */
  private enter(n: number): void {
    this.writes += n;
    if (this.writes > this.pressure.maxPending) this.pressure.maxPending = this.writes;
    const max = this.o.maxPendingWrites ?? Infinity;
    if (!this.held && this.writes >= max) {
      this.held = true;
      this.pressure.holds++;
      this.o.backpressure(true);
    }
  }

  /** `n` writes done (or given up): dispatch resumes once they are down to three quarters of the mark. */
  private leave(n: number): void {
    this.writes -= n;
    const max = this.o.maxPendingWrites ?? Infinity;
    if (this.held && this.writes <= Math.floor((max * 3) / 4)) {
      this.held = false;
      this.o.backpressure(false);
    }
  }

  /** Whether dispatch is held for pending writes now. */
  get backpressured(): boolean {
    return this.held;
  }

  /**
   * A write that ends an attempt's row, counted from now: it waits for the
   * row's start to be written (`row`, its stepnr or null), then goes. The
   * row stops being live once it is done (or given up).
   */
  async closing<T>(buildId: number, row: Promise<number | null>, write: (stepnr: number | null) => Promise<T>): Promise<T> {
    this.enter(1);
    let stepnr: number | null = null;
    try {
      stepnr = await row;
      const nr = stepnr;
      return await this.attempt(() => write(nr));
    } finally {
      this.leave(1);
      if (stepnr !== null) this.liveRows.delete(`${buildId}:${stepnr}`);
    }
  }

  /** Waits for the write gate; stopping meanwhile gives the write up. */
  private async gateOpen(): Promise<void> {
    const gate = this.o.gate;
    if (!gate) return;
    let open = false;
    const opened = gate.whenOpen().then(() => {
      open = true;
    });
    opened.catch(() => {});
    await Promise.race([opened, this.stopWait]);
    if (!open) throw new Error('runner stopping while the database is unreachable; write dropped');
  }

  /**
   * After the database came back: once `starting` (the start rows of the
   * running attempts) have landed, busy rows that are none of this runner's
   * live attempts are aborted. Returns how many.
   */
  async abortOrphans(starting: readonly Promise<unknown>[]): Promise<number> {
    await Promise.all(starting);
    return this.persist(() => this.o.db.abortOrphans(unixNow(this.o.clock.now()), [...this.liveRows.values()]));
  }

  /** Writes waiting for the gate give up now; later ones still go. */
  abandonWaiting(): void {
    this.stopped();
  }

  /** As abandonWaiting, and failed writes are no longer retried. */
  stop(): void {
    this.stopping = true;
    this.stopped();
  }

  /** Keeps `p` until it settles (see settle); its failure is logged. */
  track(p: Promise<unknown>): void {
    const t = p.catch((err: unknown) => this.o.log.error({ err: String((err as Error)?.stack ?? err) }, 'scheduler write failed'));
    this.inflight.add(t);
    void t.finally(() => this.inflight.delete(t));
  }

  /** Resolves when every tracked write has settled. */
  async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /** Writes waiting for the database or in flight. */
  get pending(): number {
    return this.writes;
  }
}
