import { spawn } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { createRequire } from 'node:module';
import { Duplex, PassThrough, Readable } from 'node:stream';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isMainThread } from 'node:worker_threads';
import zlib from 'node:zlib';
import { CompressionError } from '../errors/index.ts';
import { bzip2Compress, IN_MEMORY_LIMIT, zstdCompress } from './wasm-codecs.ts';

/**
 * Binary-cache compression methods, named as in a narinfo's `Compression:`
 * field. Backends (chosen for Node 20, which has no zstd in zlib):
 *
 * | method | backend                                        | default level        |
 * |--------|------------------------------------------------|----------------------|
 * | xz     | `lzma-native` (liblzma in-process); `xz` CLI if it cannot load | 6 (xz's default)     |
 * | bzip2  | `bzip2` CLI; whole buffers up to 8 MiB in-process (WebAssembly) | 9 (bzip2's default)  |
 * | zstd   | `zstd` CLI (zstd-napi would need a 40 s native build); whole buffers up to 8 MiB in-process (WebAssembly) | 3 (zstd's default) |
 * | br     | node:zlib brotli                               | 11 (brotli's and Nix's default; slow) |
 * | gzip   | node:zlib                                      | 6                    |
 * | none   | pass-through                                   |                      |
 *
 * In-process backends do their CPU work on the calling thread (lzma-native is
 * run synchronously inside worker threads so that the pool size bounds the
 * cores used); CLI backends run in a child process, so inside a worker they
 * only cost the piping.
 */
export const COMPRESSION_METHODS = ['none', 'xz', 'bzip2', 'zstd', 'br', 'gzip'] as const;
export type CompressionMethod = (typeof COMPRESSION_METHODS)[number];

export interface CompressOptions {
  /** Compression level/preset; each method's default when omitted. */
  level?: number;
  /** xz only: encoder threads (Nix's `parallel-compression`). Default 1. */
  threads?: number;
}

export function isCompressionMethod(s: string): s is CompressionMethod {
  return (COMPRESSION_METHODS as readonly string[]).includes(s);
}

export function parseCompressionMethod(s: string): CompressionMethod {
  if (!isCompressionMethod(s)) throw new CompressionError(s, `unknown compression method (expected one of ${COMPRESSION_METHODS.join(', ')})`);
  return s;
}

/** The suffix Nix 2.8 gives the NAR file in a binary cache: `nar/<filehash>.nar<ext>`. */
export function narFileExtension(method: CompressionMethod): string {
  switch (method) {
    case 'xz':
      return '.xz';
    case 'bzip2':
      return '.bz2';
    case 'zstd':
      return '.zst';
    case 'br':
      return '.br';
    default:
      return '';
  }
}

const LEVELS: Record<Exclude<CompressionMethod, 'none'>, [min: number, max: number, dflt: number]> = {
  xz: [0, 9, 6],
  bzip2: [1, 9, 9],
  zstd: [1, 19, 3],
  br: [0, 11, 11],
  gzip: [0, 9, 6],
};

function levelFor(method: Exclude<CompressionMethod, 'none'>, level: number | undefined): number {
  const [min, max, dflt] = LEVELS[method];
  if (level === undefined) return dflt;
  if (!Number.isInteger(level) || level < min || level > max) throw new CompressionError(method, `level must be an integer in ${min}..${max}, got ${level}`);
  return level;
}

// ---------------------------------------------------------------- lzma-native

interface LzmaNative {
  createCompressor(options: { preset: number; check: number; threads?: number; synchronous?: boolean }): Duplex;
  createDecompressor(options?: { synchronous?: boolean }): Duplex;
  CHECK_CRC64: number;
}

let lzma: LzmaNative | null | undefined;

/**
 * lzma-native if it loads here (prebuilt binary), else null (the `xz` CLI is
 * used). HYDRANT_XZ_BACKEND=cli forces the CLI (read at each call).
 */
function loadLzma(): LzmaNative | null {
  if (process.env.HYDRANT_XZ_BACKEND === 'cli') return null;
  if (lzma === undefined) {
    try {
      lzma = createRequire(import.meta.url)('lzma-native') as LzmaNative;
    } catch {
      lzma = null;
    }
  }
  return lzma;
}

/** Which implementation xz uses in this process. */
export function xzBackend(): 'lzma-native' | 'xz-cli' {
  return loadLzma() ? 'lzma-native' : 'xz-cli';
}

// ---------------------------------------------------------------- CLI tools

/**
 * A compressor running as a child process, as a Duplex: writes go to its
 * stdin, its stdout is readable. The readable side ends only once the tool
 * exited with status 0; otherwise the stream fails with a CompressionError
 * carrying the tool's stderr.
 */
class ToolStream extends Duplex {
  private readonly child: ChildProcessByStdio<Writable, Readable, Readable>;
  private stderrText = '';

  constructor(
    private readonly method: string,
    argv: [string, ...string[]],
  ) {
    super();
    const [cmd, ...args] = argv;
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const { stdin, stdout, stderr } = this.child;
    stdout.on('data', (b: Buffer) => {
      if (!this.push(b)) stdout.pause();
    });
    stderr.on('data', (b: Buffer) => {
      if (this.stderrText.length < 4096) this.stderrText += b.toString('utf8');
    });
    stdin.on('error', () => {
      // EPIPE when the tool dies early: reported with its exit status below.
    });
    this.child.on('error', (e) => this.destroy(new CompressionError(method, `cannot run ${cmd}: ${e.message}`, { cause: e })));
    this.child.on('close', (code, signal) => {
      if (code === 0) this.push(null);
      else this.destroy(new CompressionError(method, `${argv.join(' ')} exited with ${code ?? signal}: ${this.stderrText.trim()}`));
    });
  }

  override _read(): void {
    this.child.stdout.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.child.stdin.write(chunk)) cb();
    else this.child.stdin.once('drain', () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.child.stdin.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    cb(err);
  }
}

/** A streaming compressor for `method`. */
export function createCompressor(method: CompressionMethod, options: CompressOptions = {}): Duplex {
  switch (method) {
    case 'none':
      return new PassThrough();
    case 'xz': {
      const level = levelFor('xz', options.level);
      const threads = options.threads ?? 1;
      const l = loadLzma();
      if (l) {
        return l.createCompressor({
          preset: level,
          check: l.CHECK_CRC64,
          ...(threads > 1 ? { threads } : {}),
          synchronous: !isMainThread && threads <= 1,
        });
      }
      return new ToolStream(method, ['xz', '-c', `-${level}`, `-T${threads}`]);
    }
    case 'bzip2':
      return new ToolStream(method, ['bzip2', '-c', `-${levelFor('bzip2', options.level)}`]);
    case 'zstd':
      return new ToolStream(method, ['zstd', '-c', '-q', `-${levelFor('zstd', options.level)}`]);
    case 'br':
      return zlib.createBrotliCompress({ params: { [zlib.constants.BROTLI_PARAM_QUALITY]: levelFor('br', options.level) } });
    case 'gzip':
      return zlib.createGzip({ level: levelFor('gzip', options.level) });
  }
}

/**
 * A streaming decompressor for `method`. Corrupt input fails the stream with
 * the backend's error (a CompressionError for CLI tools; zlib's or liblzma's
 * own otherwise): use `asCompressionError` to normalise.
 */
export function createDecompressor(method: CompressionMethod): Duplex {
  switch (method) {
    case 'none':
      return new PassThrough();
    case 'xz': {
      const l = loadLzma();
      if (l) return l.createDecompressor({ synchronous: !isMainThread });
      return new ToolStream(method, ['xz', '-d', '-c']);
    }
    case 'bzip2':
      return new ToolStream(method, ['bzip2', '-d', '-c']);
    case 'zstd':
      return new ToolStream(method, ['zstd', '-d', '-c', '-q']);
    case 'br':
      return zlib.createBrotliDecompress();
    case 'gzip':
      return zlib.createGunzip();
  }
}

/** Normalises any error from a compression stream to a CompressionError. */
export function asCompressionError(method: string, e: unknown): CompressionError {
  return e instanceof CompressionError ? e : new CompressionError(method, e instanceof Error ? e.message : String(e), { cause: e });
}

async function throughStream(input: Uint8Array, s: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  await pipeline(Readable.from([Buffer.from(input.buffer, input.byteOffset, input.byteLength)]), s, async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) parts.push(c);
  });
  return Buffer.concat(parts);
}

/** Compresses a whole buffer (in-process backends synchronously: callers are expected to be worker threads). */
export async function compressBuffer(data: Uint8Array, method: CompressionMethod, options: CompressOptions = {}): Promise<Buffer> {
  try {
    switch (method) {
      case 'none':
        return Buffer.from(data);
      case 'br':
        return zlib.brotliCompressSync(data, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: levelFor('br', options.level) } });
      case 'gzip':
        return zlib.gzipSync(data, { level: levelFor('gzip', options.level) });
      case 'zstd':
        if (data.length <= IN_MEMORY_LIMIT) return await zstdCompress(data, levelFor('zstd', options.level));
        return await throughStream(data, createCompressor(method, options));
      case 'bzip2':
        if (data.length <= IN_MEMORY_LIMIT) return await bzip2Compress(data, levelFor('bzip2', options.level));
        return await throughStream(data, createCompressor(method, options));
      default:
        return await throughStream(data, createCompressor(method, options));
    }
  } catch (e) {
    throw asCompressionError(method, e);
  }
}

/** Decompresses a whole buffer. */
export async function decompressBuffer(data: Uint8Array, method: CompressionMethod): Promise<Buffer> {
  try {
    switch (method) {
      case 'none':
        return Buffer.from(data);
      case 'br':
        return zlib.brotliDecompressSync(data);
      case 'gzip':
        return zlib.gunzipSync(data);
      default:
        return await throughStream(data, createDecompressor(method));
    }
  } catch (e) {
    throw asCompressionError(method, e);
  }
}
