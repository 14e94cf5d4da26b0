export interface CoalescerOptions {
  /** Keys per call at most. */
  maxBatch: number;
  /** Calls running at once at most: keys arriving meanwhile wait and go together in the next one. */
  maxInFlight: number;
  /**
   * A call starts once no key has arrived for this long (0: at once): loaders
   * that all end up waiting on it stop adding keys, so it goes with all of them.
   */
  lingerMs: number;
  /** ...but no key waits longer than this for company. */
  maxWaitMs?: number;
}

interface Pending<K, V> {
  key: K;
  at: number;
  resolve(v: V): void;
  reject(e: unknown): void;
}

/**
 * Turns single requests made by many concurrent loaders into few batch calls
 * on few connections. Unlike a per-tick batcher, it does not start a call per
 * tick: while `maxInFlight` calls run, requests pile up, so under load the
 * number of calls follows the database's pace instead of the loaders' (2,000
 * builds meeting a failed dependency once cost 2,000 transactions on 65
 * connections at once).
 */
export class Coalescer<K, V> {
  private pending: Pending<K, V>[] = [];
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private lastAt = 0;

  constructor(
    private readonly run: (keys: K[]) => Promise<readonly V[]>,
    private readonly o: CoalescerOptions,
  ) {}

  load(key: K): Promise<V> {
    return new Promise((resolve, reject) => {
      this.lastAt = Date.now();
      this.pending.push({ key, at: this.lastAt, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.pending.length > 0 && this.inFlight < this.o.maxInFlight) {
      const due = Math.min(this.lastAt + this.o.lingerMs, this.pending[0]!.at + (this.o.maxWaitMs ?? 1000));
      const wait = due - Date.now();
      if (this.pending.length < this.o.maxBatch && wait > 0) {
        if (this.timer) clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          this.timer = null;
          this.pump();
        }, wait);
        return;
      }
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      const batch = this.pending.splice(0, this.o.maxBatch);
      this.inFlight++;
      let call: Promise<readonly V[]>;
      try {
        call = this.run(batch.map((p) => p.key));
      } catch (err) {
        call = Promise.reject(err);
      }
      call
        .then(
          (values) => batch.forEach((p, i) => p.resolve(values[i]!)),
          (err: unknown) => batch.forEach((p) => p.reject(err)),
        )
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}
