import type { StepFinisher, StepJob, StepOutcome } from '../actors/builder-port.ts';
import type { FileBinaryCache } from '../cache/file-cache.ts';
import { readFile } from 'node:fs/promises';
import { uploadClosure } from '../cache/upload.ts';
import type { Logger } from '../util/logger.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { addGcRoots } from './gc-roots.ts';
import { writeCompressedBuildLog } from './log-compression.ts';

export interface OutputPublisherOptions {
  pool: WorkerPool;
  /** The binary caches of remoteStoreAddr. */
  caches: readonly FileBinaryCache[];
  /** Where outputs are registered as GC roots. */
  rootsDir: string;
  log: Logger;
}

/**
 * What happens to a step's result before it counts as done: its log is
 * compressed (and, unless empty, published to each cache as `log/<drv>`), and on success
 * its outputs become GC roots and their closure is uploaded to every cache.
 * An upload failure throws, which fails the attempt transiently: the step
 * is retried instead of being recorded with outputs the caches lack. A log
 * that cannot be compressed or published is only logged: the build's
 * result does not depend on it.
 */
export class OutputPublisher implements StepFinisher {
  /** Totals for metrics: paths and logs published, compressed and NAR bytes, failed uploads. */
  readonly stats = { paths: 0, bytes: 0, narBytes: 0, logs: 0, failures: 0 };

  constructor(private readonly o: OutputPublisherOptions) {}

  async finish(job: StepJob, outcome: Exclude<StepOutcome, { kind: 'transient' }>): Promise<StepOutcome> {
    const { log } = this.o;
    let logFile = outcome.logFile;
    try {
      if (logFile !== '' && !logFile.endsWith('.bz2')) {
        // Read once: the caches take the plain text, then Hydra's own copy is compressed.
        const text = await readLog(logFile);
        const body = text ?? Buffer.alloc(0);
        // A build that printed nothing has nothing for `nix log` to show: the caches get no file for it.
        if (body.length > 0) {
          const wrote = await Promise.all(this.o.caches.map((c) => c.uploadLogText(job.drvPath, body)));
          this.stats.logs += wrote.filter(Boolean).length;
        }
        logFile = await writeCompressedBuildLog(this.o.pool, logFile, body, text !== null);
      }
    } catch (err) {
      log.warn({ drv: job.drvPath, err: String((err as Error)?.message ?? err) }, 'could not compress or publish the build log');
    }
    if (outcome.kind === 'success') {
      const paths = outcome.outputs.map((o) => o.path);
      await addGcRoots(this.o.rootsDir, paths);
      for (const cache of this.o.caches) {
        const started = performance.now();
        const r = await uploadClosure(cache, paths).catch((err: unknown) => {
          this.stats.failures++;
          throw err;
        });
        for (const u of r.uploaded) {
          this.stats.paths++;
          this.stats.bytes += u.fileSize;
          this.stats.narBytes += u.narSize;
        }
        if (r.uploaded.length > 0) {
          log.info({ drv: job.drvPath, cache: cache.root, uploaded: r.uploaded.length, bytes: r.uploaded.reduce((n, u) => n + u.fileSize, 0), ms: Math.round(performance.now() - started) }, 'outputs uploaded');
        }
      }
    }
    return { ...outcome, logFile };
  }
}

/** The log's text, or null when the build printed nothing (no file was started). */
async function readLog(file: string): Promise<Buffer | null> {
  try {
    return await readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}
