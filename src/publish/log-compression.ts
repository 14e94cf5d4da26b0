import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { SMALL_FILE } from '../util/small-file.ts';
import { asDiskWriteError } from '../errors/files.ts';
import { makeDirSync } from '../util/make-dir.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { withRoom } from '../workers/with-room.ts';

/**
 * Writes a finished build's log as `<log>.bz2`, which Hydra's web interface
 * reads, and removes the plain file (which exists only while the step runs,
 * for live tailing). Logs are capped by maxLogSize, so one is compressed in
 * memory, on the worker pool. A step that printed nothing gets an empty log,
 * as in Hydra, which creates the file before the build. Returns the log's
 * final name.
 */
/** What `bzip2` makes of no input (a header and an end-of-stream marker): a silent step's log needs no pool task. */
export const EMPTY_BZIP2: Buffer = Buffer.from('425a683917724538509000000000', 'hex');

/**
 * Log directories this process made or wrote into: a step that printed
 * nothing is often the first with a log in its directory (Hydra's layout
 * spreads logs over many), and making the directory up front costs less
 * than a write failing first. Bounded; a directory removed since is made
 * again on the write's ENOENT.
 */
const logDirs = new Set<string>();
const LOG_DIRS_MAX = 4096;

export async function writeCompressedBuildLog(pool: WorkerPool, logFile: string, text: Buffer, plainExists: boolean): Promise<string> {
  const compressed = text.length === 0 ? EMPTY_BZIP2 : await withRoom(pool, () => pool.compress(text, 'bzip2'));
  const target = `${logFile}.bz2`;
  const temp = `${target}.tmp-${process.pid}`;
  const dir = dirname(target);
  // A small log (most are, compressed) is written with synchronous calls: one
  // system call each, where the thread pool costs a hand-off per call.
  const small = compressed.length <= SMALL_FILE;
  try {
    // The plain log's directory exists; otherwise, unless known, it is made first.
    if (!plainExists && !logDirs.has(dir)) makeDirSync(dir);
    if (small) {
      try {
        writeFileSync(temp, compressed);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        makeDirSync(dir);
        writeFileSync(temp, compressed);
      }
    } else {
      await writeFile(temp, compressed).catch(async (e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
        makeDirSync(dir);
        await writeFile(temp, compressed);
      });
    }
    if (logDirs.size >= LOG_DIRS_MAX) logDirs.clear();
    logDirs.add(dir);
    renameSync(temp, target);
  } catch (e) {
    // A full disk leaves no partial file behind.
    try {
      unlinkSync(temp);
    } catch {
      // never created
    }
    throw asDiskWriteError(e, 'the compressed build log', target);
  }
  if (plainExists) unlinkSync(logFile);
  return target;
}
