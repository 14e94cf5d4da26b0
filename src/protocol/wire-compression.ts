import { spawnSync } from 'node:child_process';
import { Readable, pipeline, type Duplex } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { ProtocolError } from '../errors/index.ts';
import { createCompressor, createDecompressor, type CompressionMethod } from '../workers/compression.ts';
import { Compression } from './gen/runner.ts';

/**
 * NARs smaller than this travel plain: compressing them saves little and
 * costs a compressor process per path (most requisites and outputs of
 * small steps are a few KiB).
 */
export const WIRE_COMPRESSION_MIN_BYTES = 64 * 1024;

const METHODS = new Map<Compression, CompressionMethod>([
  [Compression.COMPRESSION_NONE, 'none'],
  [Compression.COMPRESSION_ZSTD, 'zstd'],
  [Compression.COMPRESSION_XZ, 'xz'],
]);

let zstd: boolean | undefined;

/** Whether the `zstd` tool (the streaming backend for zstd on Node 20) is installed here. */
export function zstdAvailable(): boolean {
  zstd ??= spawnSync('zstd', ['--version'], { stdio: 'ignore' }).status === 0;
  return zstd;
}

/** The compression this side can read, best first (what a receiver offers). */
export function readableCompressions(): Compression[] {
  return zstdAvailable() ? [Compression.COMPRESSION_ZSTD, Compression.COMPRESSION_NONE] : [Compression.COMPRESSION_NONE];
}

/** What a sender uses for a NAR of `narSize` bytes, given what the receiver reads. */
export function chooseCompression(narSize: number, accept: readonly Compression[]): Compression {
  if (narSize >= WIRE_COMPRESSION_MIN_BYTES && zstdAvailable() && accept.includes(Compression.COMPRESSION_ZSTD)) return Compression.COMPRESSION_ZSTD;
  return Compression.COMPRESSION_NONE;
}

function methodOf(c: Compression): CompressionMethod {
  const m = METHODS.get(c);
  if (!m) throw new ProtocolError(status.INVALID_ARGUMENT, `unknown compression ${c}`);
  return m;
}

/** Streams `chunks` through `stage`; errors on either side end the iteration with that error. */
async function* through(chunks: AsyncIterable<Uint8Array>, stage: Duplex): AsyncGenerator<Uint8Array> {
  let failure: Error | null = null;
  pipeline(Readable.from(chunks, { objectMode: false }), stage, (err) => {
    if (err) failure = err;
  });
  try {
    for await (const c of stage) yield c as Uint8Array;
  } finally {
    stage.destroy();
  }
  if (failure) throw failure;
}

/** The wire form of plain NAR chunks. */
export function compressChunks(chunks: AsyncIterable<Uint8Array>, c: Compression): AsyncIterable<Uint8Array> {
  const m = methodOf(c);
  return m === 'none' ? chunks : through(chunks, createCompressor(m, { level: 3 }));
}

/** Plain NAR chunks from their wire form. */
export function decompressChunks(chunks: AsyncIterable<Uint8Array>, c: Compression): AsyncIterable<Uint8Array> {
  const m = methodOf(c);
  return m === 'none' ? chunks : through(chunks, createDecompressor(m));
}
