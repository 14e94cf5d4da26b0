import { CompressionError } from '../errors/index.ts';

/**
 * zstd and bzip2 compression of whole buffers in-process (both compiled to
 * WebAssembly), for payloads small enough to hold in memory: a build log or
 * a small NAR then costs no `zstd`/`bzip2` process, whose start-up cost far
 * more than compressing a few kilobytes. The output is what the command-line
 * tools read (`zstd -d`, `bzip2 -d`). Larger payloads stream through the
 * tools (see createCompressor). Used on worker threads.
 */

/** Largest payload compressed in memory; above it the tools stream. */
export const IN_MEMORY_LIMIT = 8 * 1024 * 1024;

interface Zstd {
  compress(buf: Uint8Array, level?: number): Uint8Array;
}
interface Bzip2 {
  compress(data: Uint8Array, blockSize: number, compressedLength: number): Uint8Array;
}

let zstd: Promise<Zstd> | undefined;
let bzip2: Promise<Bzip2> | undefined;

function loadZstd(): Promise<Zstd> {
  zstd ??= import('@bokuweb/zstd-wasm').then(async (m) => {
    await m.init();
    return { compress: m.compress };
  });
  return zstd;
}

/**
 * bzip2-wasm's loader finds its .wasm through the globals `require` and
 * `__dirname`, which it sets itself: they are removed again once it loaded.
 */
function loadBzip2(): Promise<Bzip2> {
  bzip2 ??= (async () => {
    const g = globalThis as { require?: unknown; __dirname?: unknown };
    const before = { require: g.require, __dirname: g.__dirname };
    try {
      const { default: BZip2 } = await import('bzip2-wasm');
      const b = new BZip2();
      await b.init();
      return b;
    } finally {
      if (before.require === undefined) delete g.require;
      else g.require = before.require;
      if (before.__dirname === undefined) delete g.__dirname;
      else g.__dirname = before.__dirname;
    }
  })();
  return bzip2;
}

export async function zstdCompress(data: Uint8Array, level: number): Promise<Buffer> {
  const z = await loadZstd();
  const out = z.compress(data, level);
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

export async function bzip2Compress(data: Uint8Array, level: number): Promise<Buffer> {
  const b = await loadBzip2();
  // bzip2's bound for its output: 1% more than the input plus 600 bytes.
  const bound = data.length + Math.ceil(data.length / 100) + 600;
  try {
    const out = b.compress(data, level, bound);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  } catch (e) {
    throw new CompressionError('bzip2', (e as Error).message, { cause: e });
  }
}
