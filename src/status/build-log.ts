import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { buildLogPath } from '../nix/build-logs.ts';
import { createDecompressor, type CompressionMethod } from '../workers/compression.ts';

/** A derivation path the log reader accepts: a store path's basename shape, nothing else (it names a file). */
const DRV_BASENAME = /^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+\.drv$/;

export function isDrvPath(p: string, storeDir: string): boolean {
  const prefix = `${storeDir}/`;
  return p.startsWith(prefix) && DRV_BASENAME.test(p.slice(prefix.length));
}

/** The default and largest part of a log one request returns (a log is capped by maxLogSize, which may be far larger). */
export const LOG_TAIL_DEFAULT = 64 * 1024;
export const LOG_TAIL_MAX = 4 * 1024 * 1024;

/**
 * Which bytes of a log to answer: the last `tail` bytes, or `length` bytes
 * from `offset` (a reader following a live log asks from where its last
 * answer ended).
 */
export type LogRange = { readonly tail: number } | { readonly offset: number; readonly length: number };

export interface LogSlice {
  /** The bytes asked for (fewer at the log's end). */
  text: Buffer;
  /** Where `text` starts in the log. */
  offset: number;
  /** The whole log's size in bytes (decompressed). */
  size: number;
  /** `live` while the step writes it (the plain file), else how it is stored; `cache` when read from a binary cache. */
  stored: 'live' | 'bzip2' | 'zstd' | 'cache';
}

/** A binary cache's `log/<drv>` (src/cache/binary-cache.ts `readLog`). */
export interface LogCache {
  readLog(drvPath: string): Promise<Buffer | null>;
}

/** Start and end (exclusive) of a range in a log of `size` bytes. */
function bounds(range: LogRange, size: number): [number, number] {
  if ('tail' in range) return [Math.max(0, size - range.tail), size];
  const start = Math.min(range.offset, size);
  return [start, Math.min(size, start + range.length)];
}

/**
 * Part of a step's log, where the runner writes it
 * (`<hydraDataDir>/build-logs/…`): the plain file while the step runs
 * (what is written so far), `.bz2` (or `.zst`, as Hydra's Rust runner
 * writes) once it ended; else from the first binary cache that has
 * `log/<drv>` (a log another runner wrote, or one pruned here). Compressed
 * logs are streamed through the decompressor (a `bzip2`/`zstd` child
 * process, not the event loop), keeping only the range asked for in
 * memory. Null when there is no log (yet).
 */
export async function readLog(hydraDataDir: string, drvPath: string, range: LogRange, caches: readonly LogCache[] = []): Promise<LogSlice | null> {
  const file = buildLogPath(hydraDataDir, drvPath);
  const plain = await plainSlice(file, range);
  if (plain) return plain;
  for (const [ext, method] of [['.bz2', 'bzip2'], ['.zst', 'zstd']] as const) {
    const t = await compressedSlice(file + ext, method, range);
    if (t) return t;
  }
  for (const cache of caches) {
    const text = await cache.readLog(drvPath);
    if (!text) continue;
    const [start, end] = bounds(range, text.length);
    return { text: text.subarray(start, end), offset: start, size: text.length, stored: 'cache' };
  }
  return null;
}

async function plainSlice(file: string, range: LogRange): Promise<LogSlice | null> {
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (!fh) return null;
  try {
    const { size } = await fh.stat();
    const [start, end] = bounds(range, size);
    const text = Buffer.alloc(end - start);
    const { bytesRead } = await fh.read(text, 0, text.length, start);
    return { text: text.subarray(0, bytesRead), offset: start, size, stored: 'live' };
  } finally {
    await fh.close();
  }
}

async function compressedSlice(file: string, method: Extract<CompressionMethod, 'bzip2' | 'zstd'>, range: LogRange): Promise<LogSlice | null> {
  const input = createReadStream(file);
  const opened = await new Promise<boolean>((resolve, reject) => {
    input.once('open', () => resolve(true));
    input.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? resolve(false) : reject(e)));
  });
  if (!opened) return null;
  // The size is known only at the end: a tail keeps the last chunks that
  // cover it, a range keeps the chunks that overlap it.
  const parts: { at: number; data: Buffer }[] = [];
  let kept = 0;
  let size = 0;
  await pipeline(input, createDecompressor(method), async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) {
      const at = size;
      size += c.length;
      if ('tail' in range) {
        parts.push({ at, data: c });
        kept += c.length;
        // Drop whole chunks that lie wholly before the tail.
        while (parts.length > 1 && kept - parts[0]!.data.length >= range.tail) kept -= parts.shift()!.data.length;
      } else if (at + c.length > range.offset && at < range.offset + range.length) {
        parts.push({ at, data: c });
      }
    }
  });
  const [start, end] = bounds(range, size);
  const first = parts[0]?.at ?? start;
  const all = Buffer.concat(parts.map((p) => p.data));
  return { text: all.subarray(start - first, end - first), offset: start, size, stored: method };
}
