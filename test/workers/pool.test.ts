import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CompressionError, NixFormatError, WorkerPoolClosedError, WorkerQueueFullError } from '../../src/errors/index.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { narChunks, narHash } from '../../src/nix/nar.ts';
import { COMPRESSION_METHODS, compressBuffer, decompressBuffer } from '../../src/workers/compression.ts';
import type { CompressionMethod } from '../../src/workers/compression.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { MK_DRV, instantiate, runNixLines } from '../helpers/nix.ts';

async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of source) parts.push(c);
  return Buffer.concat(parts);
}

/** Decompresses with the reference command-line tool (brotli has none here: zlib is checked against itself). */
async function cliDecompress(data: Buffer, method: CompressionMethod): Promise<Buffer> {
  const cmd: Partial<Record<CompressionMethod, string[]>> = {
    xz: ['xz', '-d', '-c'],
    bzip2: ['bzip2', '-d', '-c'],
    zstd: ['zstd', '-d', '-c', '-q'],
    gzip: ['gzip', '-d', '-c'],
  };
  const argv = cmd[method];
  if (!argv) return decompressBuffer(data, method);
  return new Promise((resolve, reject) => {
    const child = execFile(argv[0]!, argv.slice(1), { encoding: 'buffer', maxBuffer: 1 << 28 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    );
    child.stdin!.end(data);
  });
}

/** Resolves when every given worker thread has exited. */
function allExited(workers: readonly { threadId: number; once(ev: 'exit', f: () => void): unknown }[]): Promise<void> {
  return Promise.all(workers.map((w) => (w.threadId === -1 ? Promise.resolve() : new Promise<void>((r) => w.once('exit', r))))).then(() => {});
}

let tmp: string;
let pool: WorkerPool;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'hydrant-workers-'));
  pool = new WorkerPool({ threads: 2 });
  await Promise.all([pool.ping(), pool.ping()]);
});

afterAll(async () => {
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('WorkerPool tasks agree with the in-thread implementations', () => {
  it('hashes buffers', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 5000 }), fc.constantFrom('sha256', 'sha512', 'sha1', 'md5' as const), async (data, algo) => {
        const expected = createHash(algo).update(data).digest();
        expect((await pool.hashBuffer(Buffer.from(data), algo)).equals(expected)).toBe(true);
      }),
      { numRuns: 25 },
    );
  });

  it('transfers owned buffers instead of copying, and never detaches a shared one', async () => {
    const owned = Buffer.from(new ArrayBuffer(64 * 1024)).fill(3);
    const expected = createHash('sha256').update(owned).digest();
    expect((await pool.hashBuffer(owned)).equals(expected)).toBe(true);
    expect(owned.byteLength).toBe(0); // moved to the worker

    const neighbour = Buffer.from('neighbour in the same pool');
    const pooled = Buffer.from('small pooled buffer');
    expect(pooled.buffer.byteLength).toBeGreaterThan(pooled.byteLength);
    expect((await pool.hashBuffer(pooled)).equals(createHash('sha256').update('small pooled buffer').digest())).toBe(true);
    expect(pooled.toString()).toBe('small pooled buffer');
    expect(neighbour.toString()).toBe('neighbour in the same pool');
  });

  it('hashes a path’s NAR in a worker, as narHash and nix do', async () => {
    const dir = join(tmp, 'tree');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    // Over 1 MiB (several read chunks), compressible enough that xz stays quick.
    writeFileSync(join(dir, 'a'), Buffer.concat([randomBytes(100_000), Buffer.alloc(1_500_000, 'abc')]));
    writeFileSync(join(dir, 'sub', 'b'), 'b');
    const ours = await pool.narHashPath(dir);
    const inThread = await narHash(dir);
    expect(ours.sha256.equals(inThread.sha256)).toBe(true);
    expect(ours.size).toBe(inThread.size);
    const [sri] = await runNixLines('nix', ['hash', 'path', dir]);
    expect(`sha256-${ours.sha256.toString('base64')}`).toBe(sri);
  });

  it('hashes files flat', async () => {
    const f = join(tmp, 'flat');
    writeFileSync(f, randomBytes(100_000));
    const r = await pool.hashFile(f);
    expect(r.digest.equals(createHash('sha256').update(readFileSync(f)).digest())).toBe(true);
    expect(r.size).toBe(100_000);
  });

  it.each(COMPRESSION_METHODS.map((m) => [m]))('%s: compresses like the in-thread code, and the reference tool decompresses it', async (method) => {
    const data = Buffer.concat([Buffer.from('nix-archive-1 '.repeat(2000)), randomBytes(5000)]);
    const level = method === 'br' ? 5 : undefined;
    const viaPool = await pool.compress(Buffer.from(data), method, { level });
    const inThread = await compressBuffer(data, method, { level });
    expect(viaPool.equals(inThread)).toBe(true);
    expect((await cliDecompress(viaPool, method)).equals(data)).toBe(true);
    expect((await pool.decompress(viaPool, method)).equals(data)).toBe(true);
    if (method !== 'none') expect(viaPool.length).toBeLessThan(data.length);
  });

  it('reports corrupt compressed data as CompressionError', async () => {
    for (const method of ['xz', 'bzip2', 'zstd', 'br', 'gzip'] as const) {
      const err = await pool.decompress(Buffer.from('definitely not compressed'), method).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CompressionError);
      expect(err).toMatchObject({ code: 'COMPRESSION_FAILED', method });
    }
    await expect(pool.compress(Buffer.from('x'), 'xz', { level: 42 })).rejects.toMatchObject({ code: 'COMPRESSION_FAILED' });
  });

  it('writes a compressed NAR with its hashes in one pass, streaming or (size known, small) in memory', async () => {
    const dir = join(tmp, 'tree');
    const narSize = (await collect(narChunks(dir))).length;
    const ways = [
      ['xz', {}],
      ['zstd', {}],
      ['zstd', { narSize, fsync: true }],
      ['bzip2', { narSize }],
    ] as const;
    for (const [method, options] of ways) {
      const out = join(tmp, `tree.nar.${method}.${'narSize' in options ? 'memory' : 'stream'}`);
      const r = await pool.writeNar(dir, out, method, options);
      const file = readFileSync(out);
      const nar = await collect(narChunks(dir));
      expect((await cliDecompress(file, method)).equals(nar)).toBe(true);
      expect(r.narSize).toBe(nar.length);
      expect(r.narHash.equals(createHash('sha256').update(nar).digest())).toBe(true);
      expect(r.fileSize).toBe(file.length);
      expect(r.fileHash.equals(createHash('sha256').update(file).digest())).toBe(true);
      // NAR files are write-once.
      await expect(pool.writeNar(dir, out, method, options)).rejects.toMatchObject({ code: 'EEXIST' });
      expect(readFileSync(out).equals(file)).toBe(true);
    }
    await expect(pool.writeNar(join(tmp, 'missing'), join(tmp, 'missing.nar'), 'none')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(pool.writeNar(join(tmp, 'missing'), join(tmp, 'missing.nar'), 'zstd', { narSize: 10 })).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('parses .drv files like parseDerivation, singly and in batches', async () => {
    const drvs = await instantiate(
      `let ${MK_DRV} in rec {
        a = mk { name = "a"; script = "echo a > $out"; };
        b = mk { name = "b"; script = "echo b > $out"; deps = [ a ]; extra = { FOO = "x\\ny\\"z"; }; };
      }`,
      ['a', 'b'],
    );
    for (const p of drvs) {
      const text = readFileSync(p, 'utf8');
      expect(await pool.parseDerivation(text)).toEqual(parseDerivation(text));
      expect(await pool.parseDerivation(readFileSync(p))).toEqual(parseDerivation(text));
    }
    expect(await pool.parseDerivationFiles(drvs)).toEqual(drvs.map((p) => parseDerivation(readFileSync(p, 'utf8'))));
    const err = await pool.parseDerivation('Derive(garbage').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NixFormatError);
    expect(err).toMatchObject({ code: 'NIX_FORMAT', format: 'derivation' });
  });

  it('reads a compressed NAR back from a URL and hashes it as stored and decompressed, for every compression', async () => {
    const served = new Map<string, Buffer>();
    const server = createServer((req, res) => {
      const body = served.get(req.url!);
      res.statusCode = body ? 200 : 404;
      res.end(body ?? '');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      let n = 0;
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 200_000 }), fc.constantFrom(...COMPRESSION_METHODS), async (data, method) => {
          const file = await compressBuffer(Buffer.from(data), method);
          const url = `/o${n++}`;
          served.set(url, file);
          const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();
          const got = await pool.hashCompressedNar(`${base}${url}`, method);
          expect(got.fileSize).toBe(file.length);
          expect(got.fileHash.equals(sha(file))).toBe(true);
          expect(got.narSize).toBe(data.length);
          expect(got.narHash.equals(sha(data))).toBe(true);
        }),
        { numRuns: 18 },
      );
      // A NAR of megabytes through every streaming decompressor (xz once stalled past ~16 KiB behind a generator stage).
      const big = randomBytes(3 * 1024 * 1024 + 17);
      for (const method of COMPRESSION_METHODS) {
        served.set(`/big-${method}`, await compressBuffer(big, method));
        const got = await pool.hashCompressedNar(`${base}/big-${method}`, method);
        expect([method, got.narSize, got.narHash.toString('hex')]).toEqual([method, big.length, createHash('sha256').update(big).digest('hex')]);
      }
      // Bytes that do not decompress: a CompressionError; a missing object: the upload is refused.
      served.set('/garbage', randomBytes(1000));
      await expect(pool.hashCompressedNar(`${base}/garbage`, 'xz')).rejects.toBeInstanceOf(CompressionError);
      await expect(pool.hashCompressedNar(`${base}/missing`, 'none')).rejects.toMatchObject({ code: 'PRESIGNED_UPLOAD' });
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('exposes utilization statistics', async () => {
    // A pool of its own: its busy time is that of the tasks below only.
    const pool = new WorkerPool({ threads: 2 });
    await pool.ready();
    // Warm both threads, so the measured tasks do not wait for a start.
    await Promise.all([pool.ping(20), pool.ping(20)]);
    const before = pool.stats();
    const t0 = performance.now();
    const inFlightMs: number[] = [];
    const timed = () => pool.ping(100).then(() => inFlightMs.push(performance.now() - t0));
    await Promise.all([timed(), timed()]);
    const s = pool.stats();
    await pool.close();
    expect(s.completed).toBe(before.completed + 2);
    expect(s.threads).toBe(2);
    expect(s.inFlight).toBe(0);
    expect(s.utilization).toBeGreaterThan(0);
    expect(s.utilization).toBeLessThanOrEqual(1);
    expect(s.capacity).toBe(2 + 8);
    // Busy time is the sum of the two tasks' times in flight. Each holds a
    // thread for at least its 100 ms sleep (timers may fire up to a
    // millisecond early), and each lies inside the interval measured around it
    // here. Both bounds hold however slowly a loaded machine runs the threads;
    // counting one busy thread while two are busy falls below the lower one
    // whenever the two sleeps overlap, as they do on an idle machine.
    const busyGrowth = s.busyThreadMs - before.busyThreadMs;
    expect(busyGrowth).toBeGreaterThanOrEqual(2 * 99);
    expect(busyGrowth).toBeLessThanOrEqual(inFlightMs[0]! + inFlightMs[1]!);
  });
});

describe('WorkerPool backpressure and shutdown', () => {
  it('rejects beyond threads + maxQueue, and ready() waits for room', async () => {
    const small = new WorkerPool({ threads: 1, maxQueue: 1 });
    try {
      const a = small.ping(150);
      const b = small.ping(150);
      expect(small.hasCapacity).toBe(false);
      await expect(small.ping()).rejects.toBeInstanceOf(WorkerQueueFullError);
      // A buffer refused for lack of room is not detached.
      const buf = Buffer.from(new ArrayBuffer(16));
      await expect(small.hashBuffer(buf)).rejects.toMatchObject({ code: 'WORKER_QUEUE_FULL' });
      expect(buf.byteLength).toBe(16);

      // ready() resolves only once a task has settled and made room.
      let completedAtReady = -1;
      const waited = small.ready().then(() => {
        completedAtReady = small.stats().completed;
      });
      expect(small.stats().waiting).toBe(1);
      const completedBefore = small.stats().completed;
      await waited;
      expect(completedAtReady).toBeGreaterThan(completedBefore);
      const c = small.ping(); // submitted right after ready(): accepted
      await Promise.all([a, b, c]);
      expect(small.stats()).toMatchObject({ inFlight: 0, failed: 0, rejected: 2, waiting: 0 });
    } finally {
      await small.close();
    }
  });

  it('close() waits for running and queued tasks, then leaves no threads', async () => {
    const p = new WorkerPool({ threads: 2 });
    await Promise.all([p.ping(), p.ping()]);
    const workers = [...p.workers];
    expect(workers).toHaveLength(2);
    const exited = allExited(workers);
    const running = [p.ping(200), p.ping(200), p.ping(100)];
    const closing = p.close();
    await expect(p.ping()).rejects.toBeInstanceOf(WorkerPoolClosedError);
    await expect(p.ready()).rejects.toBeInstanceOf(WorkerPoolClosedError);
    const results = await Promise.all(running);
    expect(results.every((id) => typeof id === 'number')).toBe(true);
    expect(await closing).toEqual({ timedOut: false });
    await exited;
    expect(workers.every((w) => w.threadId === -1)).toBe(true);
    expect(p.workers).toHaveLength(0);
    expect(p.stats().threads).toBe(0);
    expect(await p.close()).toEqual({ timedOut: false }); // idempotent
  });

  it('close() terminates tasks still running after the timeout', async () => {
    const p = new WorkerPool({ threads: 1 });
    await p.ping();
    const workers = [...p.workers];
    const slow = p.ping(5_000);
    const closing = p.close({ timeoutMs: 100 });
    // Terminated, not waited for: a 5 s ping that finished would have resolved.
    await expect(slow).rejects.toBeInstanceOf(WorkerPoolClosedError);
    expect(await closing).toEqual({ timedOut: true });
    await allExited(workers);
    expect(p.workers).toHaveLength(0);
  });
});
