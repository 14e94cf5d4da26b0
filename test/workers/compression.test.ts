import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CompressionError } from '../../src/errors/index.ts';
import {
  COMPRESSION_METHODS,
  compressBuffer,
  createCompressor,
  createDecompressor,
  decompressBuffer,
  narFileExtension,
  parseCompressionMethod,
  xzBackend,
} from '../../src/workers/compression.ts';
import type { CompressionMethod } from '../../src/workers/compression.ts';

async function roundTripStreaming(method: CompressionMethod, chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  // brotli's default quality (11, as in Nix) is slow: keep the test quick.
  await pipeline(Readable.from(chunks), createCompressor(method, method === 'br' ? { level: 4 } : {}), createDecompressor(method), async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) out.push(c);
  });
  return Buffer.concat(out);
}

afterEach(() => {
  delete process.env.HYDRANT_XZ_BACKEND;
});

describe('compression', () => {
  const chunks = [Buffer.from('a'.repeat(100_000)), randomBytes(70_000), Buffer.alloc(0), Buffer.from('tail')];

  it.each(COMPRESSION_METHODS.map((m) => [m]))('%s streams round-trip across many chunks', async (method) => {
    expect((await roundTripStreaming(method, chunks)).equals(Buffer.concat(chunks))).toBe(true);
  });

  it('uses lzma-native for xz, and the xz CLI when told to; each reads the other', async () => {
    expect(xzBackend()).toBe('lzma-native');
    const data = Buffer.concat(chunks);
    const native = await compressBuffer(data, 'xz');
    process.env.HYDRANT_XZ_BACKEND = 'cli';
    expect(xzBackend()).toBe('xz-cli');
    const cli = await compressBuffer(data, 'xz');
    expect((await decompressBuffer(native, 'xz')).equals(data)).toBe(true);
    delete process.env.HYDRANT_XZ_BACKEND;
    expect((await decompressBuffer(cli, 'xz')).equals(data)).toBe(true);
  });

  it('names methods and file suffixes as Nix does', () => {
    expect(COMPRESSION_METHODS.map(narFileExtension)).toEqual(['', '.xz', '.bz2', '.zst', '.br', '']);
    expect(parseCompressionMethod('zstd')).toBe('zstd');
    expect(() => parseCompressionMethod('lz4')).toThrow(CompressionError);
    expect(() => createCompressor('bzip2', { level: 0 })).toThrow(/level must be an integer in 1\.\.9/);
  });

  it('compresses whole buffers of zstd and bzip2 in-process into what the zstd and bzip2 tools read', async () => {
    const g = globalThis as { require?: unknown; __dirname?: unknown };
    const log = Buffer.from(Array.from({ length: 2000 }, (_, i) => `line ${i} of a build log\n`).join(''));
    for (const method of ['zstd', 'bzip2'] as const) {
      for (const data of [Buffer.alloc(0), Buffer.from('x'), log, randomBytes(2_000_000)]) {
        const packed = await compressBuffer(data, method);
        // decompressBuffer runs `zstd -d` / `bzip2 -d`.
        expect((await decompressBuffer(packed, method)).equals(data), `${method} ${data.length}`).toBe(true);
        if (data === log) expect(packed.length).toBeLessThan(log.length / 5);
      }
    }
    // bzip2-wasm's loader needs these globals; they do not outlive it.
    expect([g.require, g.__dirname]).toEqual([undefined, undefined]);
  });

  it('fails a CLI stream whose tool exits non-zero, with its stderr', async () => {
    const bad = await decompressBuffer(Buffer.from('BZh9 not really'), 'bzip2').catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(CompressionError);
    expect((bad as Error).message).toMatch(/bzip2 -d -c exited with 2/);
  });
});
