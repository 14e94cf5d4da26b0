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

/** The default and largest tail a log request returns (a log is capped by maxLogSize, which may be far larger). */
export const LOG_TAIL_DEFAULT = 64 * 1024;
export const LOG_TAIL_MAX = 4 * 1024 * 1024;

export interface LogTail {
  /** The last bytes of the log (at most the tail asked for). */
  text: Buffer;
  /** The whole log's size in bytes (decompressed). */
  size: number;
  /** `live` while the step writes it (the plain file), else how it is stored. */
  stored: 'live' | 'bzip2' | 'zstd';
}

/**
 * The last `tail` bytes of a step's log, where the runner writes it
 * (`<hydraDataDir>/build-logs/…`): the plain file while the step runs
 * (what is written so far), `.bz2` (or `.zst`, as Hydra's Rust runner
 * writes) once it ended. Compressed logs are streamed through the
 * decompressor (a `bzip2`/`zstd` child process, not the event loop),
 * keeping only the tail in memory. Null when there is no log (yet).
 */
export async function readLogTail(hydraDataDir: string, drvPath: string, tail: number): Promise<LogTail | null> {
  const file = buildLogPath(hydraDataDir, drvPath);
  const plain = await plainTail(file, tail);
  if (plain) return plain;
  for (const [ext, method] of [['.bz2', 'bzip2'], ['.zst', 'zstd']] as const) {
    const t = await compressedTail(file + ext, method, tail);
    if (t) return t;
  }
  return null;
}

async function plainTail(file: string, tail: number): Promise<LogTail | null> {
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (!fh) return null;
  try {
    const { size } = await fh.stat();
    const n = Math.min(size, tail);
    const text = Buffer.alloc(n);
    const { bytesRead } = await fh.read(text, 0, n, size - n);
    return { text: text.subarray(0, bytesRead), size, stored: 'live' };
  } finally {
    await fh.close();
  }
}

async function compressedTail(file: string, method: Extract<CompressionMethod, 'bzip2' | 'zstd'>, tail: number): Promise<LogTail | null> {
  const input = createReadStream(file);
  const opened = await new Promise<boolean>((resolve, reject) => {
    input.once('open', () => resolve(true));
    input.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? resolve(false) : reject(e)));
  });
  if (!opened) return null;
  const parts: Buffer[] = [];
  let kept = 0;
  let size = 0;
  await pipeline(input, createDecompressor(method), async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) {
      size += c.length;
      parts.push(c);
      kept += c.length;
      // Drop whole chunks that lie wholly before the tail.
      while (parts.length > 1 && kept - parts[0]!.length >= tail) kept -= parts.shift()!.length;
    }
  });
  const all = Buffer.concat(parts);
  return { text: all.subarray(Math.max(0, all.length - tail)), size, stored: method };
}
