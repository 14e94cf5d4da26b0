/**
 * NARs larger than a stream buffer (16 KiB) through each compressor: a
 * compressor that stalls on back-pressure would hang here, and a stalled
 * task occupies a worker thread until the pool is closed.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import type { CacheCompression } from '../../src/cache/store-uri.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { copyFromCache, generateKey, nixPathInfo, runNixLines, tempDir } from './fixtures.ts';

let tmp: string;
let pool: WorkerPool;
let large: string;
let key: { secretFile: string; publicKey: string };

beforeAll(async () => {
  tmp = tempDir('hydrant-large-nar-');
  pool = new WorkerPool({ threads: 2, closeTimeoutMs: 100 });
  const expr = join(tmp, 'large.nix');
  // ~200 KB of text: compressible, and far above the 16 KiB stream high-water mark.
  writeFileSync(
    expr,
    `let ${MK_DRV} in mk { name = "hydrant-cache-large"; script = ''
      /bin/mkdir $out; i=0
      while [ $i -lt 5000 ]; do echo "line $i of a larger file in a NAR" >> $out/text; i=$((i+1)); done
    ''; }`,
  );
  const [drv] = await runNixLines('nix-instantiate', [expr]);
  const [outs, k] = await Promise.all([runNixLines('nix-store', ['--realise', drv!]), generateKey(tmp, 'hydrant-large-1')]);
  large = outs[0]!;
  key = k;
});

afterAll(async () => {
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function uploadAndSubstitute(compression: CacheCompression): Promise<void> {
  const dir = join(tmp, `cache-${compression}`);
  const cache = await BinaryCache.open(`file://${dir}?compression=${compression}&secret-key=${key.secretFile}`, pool);
  const r = await cache.uploadPath(large);
  expect(r.narSize).toBeGreaterThan(150_000);
  const root = join(tmp, `root-${compression}`);
  await copyFromCache(dir, root, [large], key.publicKey);
  expect((await nixPathInfo([large], root)).get(large)?.narHash).toBe((await nixPathInfo([large])).get(large)!.narHash);
}

describe('a NAR larger than a stream buffer', () => {
  // xz included: lzma-native once stalled here when handed a generator stage directly.
  it.each(['xz', 'zstd', 'bzip2', 'br', 'none'] as const)('uploads with %s and Nix substitutes it', uploadAndSubstitute, 30_000);
});
