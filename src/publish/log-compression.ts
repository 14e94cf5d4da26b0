import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { exists } from '../cache/publish-file.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { withRoom } from '../workers/with-room.ts';

/**
 * Replaces a finished build's plain log with `<log>.bz2`, which Hydra's web
 * interface reads (the plain file exists only while the step runs, for live
 * tailing). Logs are capped by maxLogSize, so one is compressed in memory,
 * on the worker pool. Returns the log's final name; a missing log is left alone.
 */
export async function compressBuildLog(pool: WorkerPool, logFile: string): Promise<string> {
  if (logFile === '' || logFile.endsWith('.bz2') || !(await exists(logFile))) return logFile;
  const data = await readFile(logFile);
  const compressed = await withRoom(pool, () => pool.compress(data, 'bzip2'));
  const target = `${logFile}.bz2`;
  const temp = `${target}.tmp-${process.pid}`;
  await writeFile(temp, compressed);
  await rename(temp, target);
  await unlink(logFile);
  return target;
}
