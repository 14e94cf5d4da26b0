import { fileURLToPath } from 'node:url';
import type { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { WorkerPoolClosedError, WorkerQueueFullError } from '../errors/index.ts';
import type { Derivation } from '../nix/derivation.ts';
import type { HashAlgo } from '../nix/hash.ts';
import type { NarHashResult } from '../nix/nar-hash.ts';
import type { RealisedOutputs, Resolution } from '../nix/resolve-derivation.ts';
import type { CompressOptions, CompressionMethod } from './compression.ts';
import { deserializeError } from './task-errors.ts';
import type { TaskReply } from './task-errors.ts';
import type { CompressedNarHashes, WriteNarResult } from './tasks.ts';
import { asBuffer, forTransfer } from './transfer.ts';

export interface WorkerPoolOptions {
  /** Worker threads, all started up front and kept (default 2). */
  threads?: number;
  /** Tasks that may wait for a thread beyond those running (default 4 per thread). */
  maxQueue?: number;
  /** How long close() lets running and queued tasks finish before terminating the threads (default 30 s). */
  closeTimeoutMs?: number;
  /** Per-thread V8 limits (e.g. maxOldGenerationSizeMb). */
  resourceLimits?: { maxOldGenerationSizeMb?: number; maxYoungGenerationSizeMb?: number; stackSizeMb?: number };
}

export interface WorkerPoolStats {
  /** Live worker threads. */
  threads: number;
  /**
   * Share of the threads' capacity in use since the pool started (0..1):
   * busyThreadMs / (threads × elapsed). Computed here, because piscina 5.3's
   * own `utilization` divides milliseconds by a thousand once too often.
   */
  utilization: number;
  /** Thread-milliseconds spent on tasks so far (a counter: its rate / threads is the utilization over any window). */
  busyThreadMs: number;
  /** Tasks waiting for a thread (piscina's queue). */
  queueSize: number;
  /** Tasks submitted and not settled yet (running + queued). */
  inFlight: number;
  /** Most tasks in flight at once: threads + maxQueue. */
  capacity: number;
  /** Tasks finished, successfully or not. */
  completed: number;
  /** Tasks that failed. */
  failed: number;
  /** Submissions refused because the pool was full (WorkerQueueFullError). */
  rejected: number;
  /** Callers blocked in ready(). */
  waiting: number;
  /** Task run time in ms (piscina's histogram). */
  runTimeMs: { mean: number; p50: number; p99: number; max: number };
}

export interface CloseOptions {
  /** Overrides the pool's closeTimeoutMs. */
  timeoutMs?: number;
}

// `hydrant` runs a copy of src/ compiled to JavaScript (bin/compiled.mjs): there the
// tasks module is tasks.js and the workers need no loader (only source maps, as the main thread).
const COMPILED = import.meta.url.endsWith('.js');
const TASKS_FILE = fileURLToPath(new URL(COMPILED ? './tasks.js' : './tasks.ts', import.meta.url));
const REGISTER_TSX = new URL('./register-tsx.mjs', import.meta.url).href;

/**
 * The CPU-work pool (DESIGN "Threads"): a piscina pool running the tasks of
 * tasks.ts on worker threads, so that the main thread stays free for I/O.
 *
 * Backpressure: at most `threads + maxQueue` tasks are in flight. A method
 * called beyond that rejects at once with WorkerQueueFullError (nothing is
 * buffered behind the caller's back). Producers that submit in a loop await
 * `ready()` first, and submit right after it resolves (no await in between):
 *
 *     for (const p of paths) { await pool.ready(); results.push(pool.narHashPath(p)); }
 *
 * Buffers given to compress/decompress/hashBuffer are transferred, not copied,
 * when they own their whole ArrayBuffer: the caller must not use them after
 * the call (they are detached). Slices of a larger buffer are copied once.
 * Results come back transferred as well.
 *
 * Workers run TypeScript: they are started with `--import register-tsx.mjs`,
 * which registers tsx inside the worker (see that file for why `--import tsx`
 * is not enough on Node 20); compiled (COMPILED), they run tasks.js as it is.
 */
export class WorkerPool {
  private readonly piscina: Piscina;
  private readonly capacity: number;
  private readonly closeTimeoutMs: number;
  private inFlight = 0;
  private readonly threads: number;
  private readonly startedAt = performance.now();
  private busyThreadMs = 0;
  private lastChange = performance.now();
  private failed = 0;
  private rejected = 0;
  private closing = false;
  private closed: Promise<{ timedOut: boolean }> | null = null;
  private readonly waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private readonly idle: (() => void)[] = [];
  /** The last error a worker raised outside any task (e.g. failing to start). */
  lastWorkerError: Error | null = null;

  constructor(options: WorkerPoolOptions = {}) {
    const threads = options.threads ?? 2;
    const maxQueue = options.maxQueue ?? 4 * threads;
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be a positive integer, got ${threads}`);
    if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new RangeError(`maxQueue must be a non-negative integer, got ${maxQueue}`);
    this.capacity = threads + maxQueue;
    this.threads = threads;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 30_000;
    this.piscina = new Piscina({
      filename: TASKS_FILE,
      minThreads: threads,
      maxThreads: threads,
      // Our own count enforces the limit; piscina's is looser so that it never
      // rejects a task we admitted (e.g. while a finished task's thread is being handed the next one).
      maxQueue: maxQueue + threads,
      idleTimeout: 0,
      execArgv: COMPILED ? ['--enable-source-maps'] : ['--import', REGISTER_TSX],
      // Tasks await I/O (file reads, child processes): don't block threads in Atomics.wait between tasks.
      atomics: 'async',
      recordTiming: true,
      ...(options.resourceLimits ? { resourceLimits: options.resourceLimits } : {}),
    });
    this.piscina.on('error', (e: Error) => {
      this.lastWorkerError = e;
    });
  }

  // ---------------------------------------------------------------- tasks

  /** Digest of a buffer (transferred to the worker). */
  async hashBuffer(data: Uint8Array, algorithm: HashAlgo = 'sha256'): Promise<Buffer> {
    const { bytes, transferList } = forTransfer(data);
    const r = await this.run<{ digest: Uint8Array }>('hashBuffer', { data: bytes, algorithm }, transferList);
    return asBuffer(r.digest);
  }

  /** NAR hash and NAR size of a filesystem path, computed entirely in the worker. */
  async narHashPath(path: string): Promise<NarHashResult> {
    const r = await this.run<{ sha256: Uint8Array; size: number }>('narHashPath', { path });
    return { sha256: asBuffer(r.sha256), size: r.size };
  }

  /** Flat digest and size of a file. */
  async hashFile(path: string, algorithm: HashAlgo = 'sha256'): Promise<{ digest: Buffer; size: number }> {
    const r = await this.run<{ digest: Uint8Array; size: number }>('hashFile', { path, algorithm });
    return { digest: asBuffer(r.digest), size: r.size };
  }

  /**
   * GETs a compressed NAR from `url` in a worker and returns the hashes and
   * sizes of its bytes as stored and decompressed (FileHash/FileSize,
   * NarHash/NarSize), streaming.
   */
  async hashCompressedNar(
    url: string,
    method: CompressionMethod,
    headers: Record<string, string> = {},
  ): Promise<{ fileHash: Buffer; fileSize: number; narHash: Buffer; narSize: number }> {
    const r = await this.run<CompressedNarHashes>('hashCompressedNar', { url, method, headers });
    return { fileHash: asBuffer(r.fileHash), fileSize: r.fileSize, narHash: asBuffer(r.narHash), narSize: r.narSize };
  }

  async compress(data: Uint8Array, method: CompressionMethod, options: CompressOptions = {}): Promise<Buffer> {
    const { bytes, transferList } = forTransfer(data);
    const r = await this.run<{ data: Uint8Array }>('compress', { ...options, data: bytes, method }, transferList);
    return asBuffer(r.data);
  }

  async decompress(data: Uint8Array, method: CompressionMethod): Promise<Buffer> {
    const { bytes, transferList } = forTransfer(data);
    const r = await this.run<{ data: Uint8Array }>('decompress', { data: bytes, method }, transferList);
    return asBuffer(r.data);
  }

  /**
   * Writes the compressed NAR of `path` to `outFile` (which must not exist) in
   * one streaming pass, returning NarHash/NarSize/FileHash/FileSize.
   */
  async writeNar(
    path: string,
    outFile: string,
    method: CompressionMethod,
    options: CompressOptions & { narSize?: number; fsync?: boolean } = {},
  ): Promise<{
    narHash: Buffer;
    narSize: number;
    fileHash: Buffer;
    fileSize: number;
  }> {
    const r = await this.run<WriteNarResult>('writeNar', { ...options, path, outFile, method });
    return { narHash: asBuffer(r.narHash), narSize: r.narSize, fileHash: asBuffer(r.fileHash), fileSize: r.fileSize };
  }

  /** Parses .drv text (src/nix/derivation.ts's parseDerivation) in a worker. */
  parseDerivation(text: string | Uint8Array): Promise<Derivation> {
    if (typeof text === 'string') return this.run<Derivation>('parseDerivation', { text });
    const { bytes, transferList } = forTransfer(text);
    return this.run<Derivation>('parseDerivation', { text: bytes }, transferList);
  }

  /** Reads and parses several .drv files in one task (batching amortises the per-task cost). */
  parseDerivationFiles(paths: string[]): Promise<Derivation[]> {
    return this.run<Derivation[]>('parseDerivationFiles', { paths });
  }

  /**
   * Resolves a derivation with its inputs' realised outputs
   * (src/nix/resolve-derivation.ts) in a worker; rejects with the same
   * DerivationResolveError when an input is unrealised.
   */
  resolveDerivation(drvPath: string, drv: Derivation, realised: RealisedOutputs): Promise<Resolution> {
    return this.run<Resolution>('resolveDerivation', { drvPath, drv, realised });
  }

  /** Several resolutions in one task; the first failure fails them all. */
  resolveDerivations(items: readonly { drvPath: string; drv: Derivation; realised: RealisedOutputs }[]): Promise<Resolution[]> {
    return this.run<Resolution[]>('resolveDerivations', { items });
  }

  /** Round trip to a worker (optionally keeping it busy for delayMs); returns its threadId. */
  async ping(delayMs = 0): Promise<number> {
    return (await this.run<{ threadId: number }>('ping', { delayMs })).threadId;
  }

  // ---------------------------------------------------------- backpressure

  /** True when a task submitted now would be accepted. */
  get hasCapacity(): boolean {
    return !this.closing && this.inFlight < this.capacity;
  }

  /**
   * Resolves when a task can be submitted (immediately if there is room);
   * waiters are served first come, first served, one per finished task.
   * Rejects with WorkerPoolClosedError once the pool is closing.
   */
  ready(): Promise<void> {
    if (this.closing) return Promise.reject(new WorkerPoolClosedError());
    if (this.inFlight + this.waiters.length < this.capacity) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private async run<T>(name: string, task: object, transferList?: ArrayBuffer[]): Promise<T> {
    if (this.closing) throw new WorkerPoolClosedError();
    if (this.inFlight >= this.capacity) {
      this.rejected++;
      throw new WorkerQueueFullError(this.capacity);
    }
    this.account();
    this.inFlight++;
    try {
      let reply: TaskReply<T>;
      try {
        reply = (await this.piscina.run(task, { name, ...(transferList ? { transferList } : {}) })) as TaskReply<T>;
      } catch (e) {
        throw this.translate(e);
      }
      if (!reply.ok) throw deserializeError(reply.error);
      return reply.value;
    } catch (e) {
      this.failed++;
      throw e;
    } finally {
      this.account();
      this.inFlight--;
      this.settled();
    }
  }

  private translate(e: unknown): unknown {
    const msg = e instanceof Error ? e.message : '';
    if (msg === 'Task queue is at limit') return new WorkerQueueFullError(this.capacity);
    if (msg === 'Terminating worker thread' || msg === 'pool is closed') {
      return new WorkerPoolClosedError('task abandoned: the worker pool was closed before it finished');
    }
    return e;
  }

  /** Adds the time since the last change, at the current occupancy, to busyThreadMs. */
  private account(): void {
    const now = performance.now();
    this.busyThreadMs += Math.min(this.inFlight, this.threads) * (now - this.lastChange);
    this.lastChange = now;
  }

  private settled(): void {
    if (!this.closing) {
      const w = this.waiters.shift();
      if (w) w.resolve();
    }
    if (this.inFlight === 0) for (const f of this.idle.splice(0)) f();
  }

  // ---------------------------------------------------------------- stats

  stats(): WorkerPoolStats {
    const rt = this.piscina.histogram.runTime;
    this.account();
    const elapsed = performance.now() - this.startedAt;
    return {
      threads: this.piscina.threads.length,
      utilization: elapsed > 0 ? Math.min(1, this.busyThreadMs / (this.threads * elapsed)) : 0,
      busyThreadMs: this.busyThreadMs,
      queueSize: this.piscina.queueSize,
      inFlight: this.inFlight,
      capacity: this.capacity,
      completed: this.piscina.completed,
      failed: this.failed,
      rejected: this.rejected,
      waiting: this.waiters.length,
      runTimeMs: { mean: rt.mean, p50: rt.p50, p99: rt.p99, max: rt.max },
    };
  }

  /** The live worker threads (for diagnostics and tests). */
  get workers(): readonly Worker[] {
    return this.piscina.threads;
  }

  // ------------------------------------------------------------- shutdown

  /**
   * Stops accepting tasks, lets running and queued ones finish (up to the
   * timeout), then terminates every thread; tasks still unfinished then reject
   * with WorkerPoolClosedError. Resolves once all threads have exited.
   * Idempotent.
   */
  close(options: CloseOptions = {}): Promise<{ timedOut: boolean }> {
    if (this.closed) return this.closed;
    this.closing = true;
    for (const w of this.waiters.splice(0)) w.reject(new WorkerPoolClosedError());
    const timeoutMs = options.timeoutMs ?? this.closeTimeoutMs;
    this.closed = (async () => {
      let timedOut = false;
      if (this.inFlight > 0) {
        let timer: NodeJS.Timeout | undefined;
        timedOut = await Promise.race([
          new Promise<boolean>((resolve) => this.idle.push(() => resolve(false))),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), timeoutMs);
          }),
        ]);
        clearTimeout(timer);
      }
      await this.piscina.destroy();
      return { timedOut };
    })();
    return this.closed;
  }
}
