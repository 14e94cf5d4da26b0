/**
 * The piscina task module: one named export per task, run on pool threads.
 * CPU work only (hashing, compression, .drv parsing); every task is also an
 * ordinary function, so tests compare it with the in-thread implementation.
 *
 * Each task returns a TaskReply envelope: errors travel as data (see
 * task-errors.ts), and result buffers are transferred, not copied.
 */
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, createWriteStream, fdatasyncSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { threadId } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { HydrantError, PresignedUploadError } from '../errors/index.ts';
import type { Derivation } from '../nix/derivation.ts';
import type { HashAlgo } from '../nix/hash.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { narHash } from '../nix/nar-hash.ts';
import type { Resolution } from '../nix/resolve-derivation.ts';
import { asCompressionError, compressBuffer, createCompressor, createDecompressor, decompressBuffer } from './compression.ts';
import { IN_MEMORY_LIMIT } from './wasm-codecs.ts';
import type { CompressOptions, CompressionMethod } from './compression.ts';
import { serializeError } from './task-errors.ts';
import type { TaskReply } from './task-errors.ts';
import { ownedBytes } from './transfer.ts';

export type { TaskReply };

async function guard<T>(fn: () => Promise<T> | T, transfer?: (value: T) => ArrayBuffer[]): Promise<TaskReply<T>> {
  let value: T;
  try {
    value = await fn();
  } catch (e) {
    return { ok: false, error: serializeError(e) };
  }
  const reply: TaskReply<T> = { ok: true, value };
  const list = transfer?.(value) ?? [];
  if (list.length === 0) return reply;
  // A piscina Transferable: the envelope is posted with `list` in the transfer list.
  return Piscina.move({ [Piscina.transferableSymbol]: list, [Piscina.valueSymbol]: reply } as never) as unknown as TaskReply<T>;
}

// ------------------------------------------------------------------ hashing

export interface HashBufferTask {
  data: Uint8Array;
  algorithm: HashAlgo;
}

export function hashBuffer(t: HashBufferTask): Promise<TaskReply<{ digest: Uint8Array }>> {
  return guard(() => ({ digest: createHash(t.algorithm).update(t.data).digest() }));
}

export interface NarHashPathTask {
  path: string;
}

/** NAR hash (sha256) and NAR size of a filesystem path, streamed in constant memory. */
export function narHashPath(t: NarHashPathTask): Promise<TaskReply<{ sha256: Uint8Array; size: number }>> {
  return guard(() => narHash(t.path));
}

export interface HashFileTask {
  path: string;
  algorithm: HashAlgo;
}

/** Flat hash of a file's bytes (e.g. a compressed NAR's FileHash). */
export function hashFile(t: HashFileTask): Promise<TaskReply<{ digest: Uint8Array; size: number }>> {
  return guard(async () => {
    const h = createHash(t.algorithm);
    let size = 0;
    for await (const chunk of createReadStream(t.path, { highWaterMark: 1 << 20 })) {
      h.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
    return { digest: h.digest(), size };
  });
}

export interface HashCompressedNarTask {
  /** Where to GET the compressed NAR (a presigned URL: a worker has no S3 client). */
  url: string;
  headers?: Record<string, string>;
  method: CompressionMethod;
}

export interface CompressedNarHashes {
  /** sha256 and size of the bytes as stored (the narinfo's FileHash, FileSize). */
  fileHash: Uint8Array;
  fileSize: number;
  /** sha256 and size once decompressed (NarHash, NarSize). */
  narHash: Uint8Array;
  narSize: number;
}

/**
 * Reads a compressed NAR back from a URL, streaming, and hashes it twice:
 * as stored and decompressed. The runner's check of a builder-direct upload
 * before it signs a narinfo (docs/CACHES.md "Builder-direct uploads").
 * Constant memory; a body that does not decompress fails with a CompressionError.
 */
export function hashCompressedNar(t: HashCompressedNarTask): Promise<TaskReply<CompressedNarHashes>> {
  return guard(async () => {
    const r = await fetch(t.url, { headers: t.headers ?? {} });
    if (!r.ok || !r.body) throw new PresignedUploadError(new URL(t.url).pathname, `reading it back: HTTP ${r.status}`);
    const fileH = createHash('sha256');
    const narH = createHash('sha256');
    let fileSize = 0;
    let narSize = 0;
    try {
      await pipeline(
        Readable.fromWeb(r.body as never),
        async function* (source: AsyncIterable<Buffer>) {
          for await (const c of source) {
            fileH.update(c);
            fileSize += c.length;
            yield c;
          }
        },
        createDecompressor(t.method),
        async function (source: AsyncIterable<Buffer>) {
          for await (const c of source) {
            narH.update(c);
            narSize += c.length;
          }
        },
      );
    } catch (e) {
      if (e instanceof HydrantError) throw e;
      throw asCompressionError(t.method, e);
    }
    return { fileHash: fileH.digest(), fileSize, narHash: narH.digest(), narSize };
  });
}

// -------------------------------------------------------------- compression

export interface CompressTask extends CompressOptions {
  data: Uint8Array;
  method: CompressionMethod;
}

export function compress(t: CompressTask): Promise<TaskReply<{ data: Uint8Array }>> {
  return guard(
    async () => ({ data: ownedBytes(await compressBuffer(t.data, t.method, t)) }),
    (v) => [v.data.buffer as ArrayBuffer],
  );
}

export interface DecompressTask {
  data: Uint8Array;
  method: CompressionMethod;
}

export function decompress(t: DecompressTask): Promise<TaskReply<{ data: Uint8Array }>> {
  return guard(
    async () => ({ data: ownedBytes(await decompressBuffer(t.data, t.method)) }),
    (v) => [v.data.buffer as ArrayBuffer],
  );
}

export interface WriteNarTask extends CompressOptions {
  /** Filesystem path to serialise. */
  path: string;
  /** Where to write the compressed NAR; must not exist (NAR files are write-once). */
  outFile: string;
  method: CompressionMethod;
  /** The NAR's expected size, when known: a small NAR is compressed in memory (no compressor process). */
  narSize?: number;
  /** Flush the file to disk before returning. */
  fsync?: boolean;
}

export interface WriteNarResult {
  narHash: Uint8Array;
  narSize: number;
  /** sha256 of the compressed file, as a narinfo's FileHash. */
  fileHash: Uint8Array;
  fileSize: number;
}

/**
 * Serialise → hash → compress → hash → write, in one streaming pass: what a
 * binary-cache upload needs (NarHash, NarSize, FileHash, FileSize and the file).
 * A partial file is removed on failure.
 */
export function writeNar(t: WriteNarTask): Promise<TaskReply<WriteNarResult>> {
  if (t.narSize !== undefined && t.narSize <= IN_MEMORY_LIMIT && t.method !== 'xz') return guard(() => writeSmallNar(t));
  return guard(async () => {
    const narH = createHash('sha256');
    const fileH = createHash('sha256');
    let narSize = 0;
    let fileSize = 0;
    let created = false;
    const out = createWriteStream(t.outFile, { flags: 'wx' });
    out.once('open', () => {
      created = true;
    });
    try {
      // The source is a Readable of its own: handing lzma-native's stream a
      // generator stage directly stalled once the NAR passed ~16 KiB.
      const nar = Readable.from(
        (async function* () {
          for await (const c of narChunks(t.path)) {
            narH.update(c);
            narSize += c.length;
            yield c;
          }
        })(),
      );
      await pipeline(
        nar,
        createCompressor(t.method, t),
        async function* (source: AsyncIterable<Buffer>) {
          for await (const c of source) {
            fileH.update(c);
            fileSize += c.length;
            yield c;
          }
        },
        out,
      );
    } catch (e) {
      if (created) await unlink(t.outFile).catch(() => {});
      // Filesystem errors and NarDumpError as they are; anything else came from the compressor.
      if (e instanceof HydrantError || (e instanceof Error && 'syscall' in e)) throw e;
      throw asCompressionError(t.method, e);
    }
    if (t.fsync) {
      const fh = await open(t.outFile, 'r');
      await fh.datasync().finally(() => fh.close());
    }
    return { narHash: narH.digest(), narSize, fileHash: fileH.digest(), fileSize };
  });
}

/**
 * writeNar for a NAR known to be small: serialised and compressed in
 * memory, written with blocking calls (this is a worker thread: a blocking
 * call costs less than a round trip through libuv's pool).
 */
async function writeSmallNar(t: WriteNarTask): Promise<WriteNarResult> {
  const parts: Uint8Array[] = [];
  for await (const c of narChunks(t.path)) parts.push(c);
  const nar = Buffer.concat(parts);
  let file: Buffer;
  try {
    file = await compressBuffer(nar, t.method, t);
  } catch (e) {
    throw asCompressionError(t.method, e);
  }
  const fd = openSync(t.outFile, 'wx', 0o644);
  try {
    for (let off = 0; off < file.length; ) off += writeSync(fd, file, off);
    if (t.fsync) fdatasyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(t.outFile);
    throw e;
  }
  closeSync(fd);
  const sha = (b: Uint8Array): Uint8Array => createHash('sha256').update(b).digest();
  return { narHash: sha(nar), narSize: nar.length, fileHash: sha(file), fileSize: file.length };
}

// -------------------------------------------------------------- derivations

type ParseDerivation = (input: string | Uint8Array) => Derivation;
let parseDerivationFn: Promise<ParseDerivation> | undefined;

/** src/nix/derivation.ts, loaded on first use so that workers that never parse a .drv do not pay for it. */
function loadParser(): Promise<ParseDerivation> {
  parseDerivationFn ??= import('../nix/derivation.ts').then((m) => m.parseDerivation);
  return parseDerivationFn;
}

export interface ParseDerivationTask {
  /** The .drv file's contents. */
  text: string | Uint8Array;
}

export function parseDerivation(t: ParseDerivationTask): Promise<TaskReply<Derivation>> {
  return guard(async () => (await loadParser())(t.text));
}

export interface ParseDerivationFilesTask {
  /** .drv paths to read and parse, in one task (amortises the per-task cost for small files). */
  paths: string[];
}

export function parseDerivationFiles(t: ParseDerivationFilesTask): Promise<TaskReply<Derivation[]>> {
  return guard(async () => {
    const parse = await loadParser();
    const out: Derivation[] = [];
    // Synchronous reads: this is a worker thread, and fs.promises.readFile costs
    // ~0.5 ms per small file in Node 20 (several thread-pool round trips), 20× the parse.
    for (const p of t.paths) out.push(parse(readFileSync(p)));
    return out;
  });
}

// --------------------------------------------------------------- resolution

type ResolveModule = typeof import('../nix/resolve-derivation.ts');
let resolveModule: Promise<ResolveModule> | undefined;

function loadResolver(): Promise<ResolveModule> {
  resolveModule ??= import('../nix/resolve-derivation.ts');
  return resolveModule;
}

export interface ResolveDerivationTask {
  drvPath: string;
  drv: Derivation;
  /** `<input drvPath>!<output>` → realised path (see resolve-derivation.ts). */
  realised: Map<string, string>;
}

/** src/nix/resolve-derivation.ts's resolveDerivation in a worker (Maps survive the structured clone). */
export function resolveDerivation(t: ResolveDerivationTask): Promise<TaskReply<Resolution>> {
  return guard(async () => (await loadResolver()).resolveDerivation(t.drvPath, t.drv, t.realised));
}

export interface ResolveDerivationsTask {
  items: ResolveDerivationTask[];
}

/** Several resolutions in one task (amortises the per-task cost); the first failure fails the task. */
export function resolveDerivations(t: ResolveDerivationsTask): Promise<TaskReply<Resolution[]>> {
  return guard(async () => {
    const { resolveDerivation: resolve } = await loadResolver();
    return t.items.map((i) => resolve(i.drvPath, i.drv, i.realised));
  });
}

// ------------------------------------------------------------------ health

export interface PingTask {
  /** Keep the thread busy this long (ms), sleeping: for health checks and tests. */
  delayMs?: number;
}

export function ping(t: PingTask): Promise<TaskReply<{ threadId: number }>> {
  return guard(async () => {
    if (t.delayMs) await new Promise((r) => setTimeout(r, t.delayMs));
    return { threadId };
  });
}
