import type { StepFinisher, StepJob, StepOutcome, ValidOutputs } from '../actors/builder-port.ts';
import type { BinaryCache } from '../cache/binary-cache.ts';
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { SMALL_FILE } from '../util/small-file.ts';
import { uploadClosure } from '../cache/upload.ts';
import { DiskWriteError } from '../errors/index.ts';
import type { Logger } from '../util/logger.ts';
import type { Realisation } from '../nix/realisation.ts';
import { hostStore, type NixStoreHandle } from '../nix/private-store.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { addGcRoots } from './gc-roots.ts';
import { writeCompressedBuildLog } from './log-compression.ts';
import { readValidOutputs } from './valid-outputs.ts';

export interface OutputPublisherOptions {
  pool: WorkerPool;
  /** The binary caches of remoteStoreAddr. */
  caches: readonly BinaryCache[];
  /** Where outputs are registered as GC roots. */
  rootsDir: string;
  log: Logger;
  /** The realisations of a built step's content-addressed outputs (published after the outputs). */
  realisations?: (drvPath: string, outputs: readonly { name: string; path: string }[], floating: boolean) => Promise<Realisation[]>;
  /** The runner's store, where outputs counted as valid are (default: the host's). */
  store?: NixStoreHandle;
}

/**
 * What happens to a step's result before it counts as done: its log is
 * compressed (and, unless empty, published to each cache as `log/<drv>`), and on success
 * its outputs become GC roots and their closure is uploaded to every cache.
 * A GC root or upload that fails (a full disk) is logged with the file and
 * thrown, which fails the attempt transiently: the step is retried instead
 * of being recorded with outputs the caches lack. A log that cannot be
 * compressed or published is only logged: the build's result does not
 * depend on it.
 */
export class OutputPublisher implements StepFinisher {
  /** Totals for metrics: paths and logs published, compressed and NAR bytes, failed uploads. */
  readonly stats = { paths: 0, bytes: 0, narBytes: 0, logs: 0, failures: 0 };

  constructor(private readonly o: OutputPublisherOptions) {}

  async finish(job: StepJob, outcome: Exclude<StepOutcome, { kind: 'transient' }>): Promise<StepOutcome> {
    const logFile = await this.publishLog(job, outcome.logFile);
    if (outcome.kind === 'success') {
      const paths = outcome.outputs.map((o) => o.path);
      try {
        await addGcRoots(this.o.rootsDir, paths);
      } catch (err) {
        this.o.log.error({ job: job.jobId, drv: job.drvPath, ...errorFields(err) }, 'cannot register the outputs as GC roots');
        throw err;
      }
      for (const cache of this.o.caches) await this.upload(job, cache, paths);
      await this.publishRealisations(job, outcome.outputs);
    }
    return { ...outcome, logFile };
  }

  /** Outputs of a build queued already built: GC roots, then their closure in every cache (what a cache has is skipped). */
  async alreadyBuilt(outputPaths: readonly string[]): Promise<void> {
    const paths = [...outputPaths];
    await addGcRoots(this.o.rootsDir, paths);
    for (const cache of this.o.caches) await this.upload({ jobId: 'already-built', drvPath: '' }, cache, paths);
  }

  /**
   * Outputs of a build that ends cached with no earlier build of them, read
   * from the runner's store: a build counts as already built only when its
   * outputs are valid there (and in every cache too,
   * src/cache/cache-valid-store.ts), and a substituted step's outputs were
   * just put there, so they are read there (the NAR contents a cache would
   * serve) rather than downloaded from a cache as Hydra's Rust runner does.
   */
  readOutputs(outputs: readonly { name: string; path: string }[]): Promise<ValidOutputs> {
    return readValidOutputs(this.o.store ?? hostStore, outputs, (r) =>
      this.o.log.warn({ file: r.file, line: r.line, text: r.text, reason: r.reason }, 'nix-support entry of an output queued already built skipped'),
    );
  }

  /**
   * The caches get the log's text, Hydra gets it compressed; returns the
   * log's final name. A part that fails (a full disk) is only logged, as in
   * Hydra: the plain log stays where it is, and the result stands.
   */
  private async publishLog(job: StepJob, logFile: string): Promise<string> {
    if (logFile === '' || logFile.endsWith('.bz2')) return logFile;
    const { log } = this.o;
    let text: Buffer | null;
    try {
      // Read once: the caches take the plain text, then Hydra's own copy is compressed.
      text = await readLog(logFile);
    } catch (err) {
      log.warn({ job: job.jobId, drv: job.drvPath, path: logFile, err: String((err as Error)?.message ?? err) }, 'could not read the build log');
      return logFile;
    }
    const body = text ?? Buffer.alloc(0);
    // A build that printed nothing has nothing for `nix log` to show: the caches get no file for it.
    if (body.length > 0) {
      await Promise.all(
        this.o.caches.map((cache) =>
          cache.uploadLogText(job.drvPath, body).then(
            (wrote) => void (wrote && this.stats.logs++),
            (err: unknown) => log.warn({ job: job.jobId, drv: job.drvPath, cache: cache.location, ...errorFields(err) }, 'could not publish the build log to the cache'),
          ),
        ),
      );
    }
    try {
      return await writeCompressedBuildLog(this.o.pool, logFile, body, text !== null);
    } catch (err) {
      log.warn({ job: job.jobId, drv: job.drvPath, ...errorFields(err) }, 'could not compress the build log; it stays plain');
      return logFile;
    }
  }

  /**
   * Publishes the realisations of the step's content-addressed outputs to
   * every cache. A failure is only logged: the outputs are published, and a
   * client without the realisation builds instead of substituting.
   */
  private async publishRealisations(job: StepJob, outputs: readonly { name: string; path: string }[]): Promise<void> {
    if (!this.o.realisations || this.o.caches.length === 0) return;
    try {
      const rs = await this.o.realisations(job.drvPath, outputs, job.outputs.some((o) => o.path === null));
      if (rs.length === 0) return;
      for (const cache of this.o.caches) await cache.publishRealisations(rs, `the realisations of ${job.drvPath}`);
      this.o.log.info({ drv: job.drvPath, realisations: rs.map((r) => r.id) }, 'realisations published');
    } catch (err) {
      this.o.log.error({ job: job.jobId, drv: job.drvPath, ...errorFields(err) }, 'cannot publish the realisations of the outputs');
    }
  }

  /** Uploads the closure of `paths` to `cache`; a failure is logged and thrown (the attempt is retried). */
  private async upload(job: Pick<StepJob, 'jobId' | 'drvPath'>, cache: BinaryCache, paths: string[]): Promise<void> {
    const started = performance.now();
    let r: Awaited<ReturnType<typeof uploadClosure>>;
    try {
      r = await uploadClosure(cache, paths);
    } catch (err) {
      this.stats.failures++;
      this.o.log.error({ job: job.jobId, drv: job.drvPath, cache: cache.location, ...errorFields(err) }, 'cannot upload the outputs to the cache');
      throw err;
    }
    for (const u of r.uploaded) {
      this.stats.paths++;
      this.stats.bytes += u.fileSize;
      this.stats.narBytes += u.narSize;
    }
    if (r.uploaded.length > 0) {
      this.o.log.info({ drv: job.drvPath, cache: cache.location, uploaded: r.uploaded.length, bytes: r.uploaded.reduce((n, u) => n + u.fileSize, 0), ms: Math.round(performance.now() - started) }, 'outputs uploaded');
    }
  }
}

/** Log fields of an error: the file a failed write names, and the message. */
function errorFields(err: unknown): { path?: string; errno?: string; err: string } {
  const message = String((err as Error)?.message ?? err);
  return err instanceof DiskWriteError ? { path: err.path, errno: err.errno, err: message } : { err: message };
}

/**
 * The log's text, or null when the build printed nothing (no file was
 * started). A stat that reports a missing file without an error tells which
 * (a failing open would build an exception per silent step), and a small log
 * is read with synchronous calls (a few system calls, no thread hand-offs).
 */
async function readLog(file: string): Promise<Buffer | null> {
  const st = statSync(file, { throwIfNoEntry: false });
  if (st === undefined) return null;
  try {
    return st.size <= SMALL_FILE ? readFileSync(file) : await readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}
