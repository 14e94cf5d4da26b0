import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectoryStorage } from '../../src/cache/directory-storage.ts';
import { publishTempSync, SMALL_FILE, tempPathFor, writeOnce } from '../../src/cache/publish-file.ts';
import { DiskWriteError } from '../../src/errors/index.ts';
import { addRootFileSync } from '../../src/nix/root-file.ts';
import { writeCompressedBuildLog } from '../../src/publish/log-compression.ts';
import { WorkerPool } from '../../src/workers/pool.ts';

/**
 * Write-once files below and above SMALL_FILE (synchronous calls and the
 * thread pool's) behave alike: the whole body or nothing under the name, an
 * existing file kept, no temporary file left behind.
 */

const root = mkdtempSync(join(tmpdir(), 'hydrant-publish-file-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// Buffers are compared with equals(): a deep toEqual of 100 KB takes seconds.

/** Sizes on both sides of the synchronous path's limit. */
const size = fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.integer({ min: SMALL_FILE - 2, max: SMALL_FILE + 2 }), fc.integer({ min: SMALL_FILE + 3, max: 3 * SMALL_FILE }));

const hidden = (dir: string): string[] => readdirSync(dir).filter((n) => n.startsWith('.'));

describe('writeOnce', () => {
  it('writes the whole body once, keeps an existing file, and leaves no temporary file', async () => {
    let n = 0;
    await fc.assert(
      // Without fsync (each flush waits for the disk); the flushed path is the next test's.
      fc.asyncProperty(size, size, async (a, b) => {
        const fsync = false;
        const dir = join(root, `w${n++}`);
        mkdirSync(dir);
        const final = join(dir, 'x.narinfo');
        const first = randomBytes(a);
        expect(await writeOnce(final, first, { fsync })).toBe(true);
        expect(readFileSync(final).equals(first)).toBe(true);
        expect(await writeOnce(final, randomBytes(b), { fsync })).toBe(false);
        expect(readFileSync(final).equals(first)).toBe(true);
        expect(hidden(dir)).toEqual([]);
      }),
      { numRuns: 30 },
    );
  });

  it('with fsync (the default), small and large bodies alike', async () => {
    for (const len of [100, SMALL_FILE + 1]) {
      const final = join(root, `synced${len}`);
      const body = randomBytes(len);
      expect(await writeOnce(final, body)).toBe(true);
      expect(readFileSync(final).equals(body)).toBe(true);
    }
    expect(hidden(root)).toEqual([]);
  });

  it('a string body is written as UTF-8', async () => {
    const final = join(root, 'text');
    expect(await writeOnce(final, 'StorePath: é\n')).toBe(true);
    expect(readFileSync(final, 'utf8')).toBe('StorePath: é\n');
  });

  it('a missing directory fails as a DiskWriteError naming the file, small or large', async () => {
    for (const len of [10, SMALL_FILE + 1]) {
      const final = join(root, 'missing', `f${len}`);
      const err = await writeOnce(final, randomBytes(len)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DiskWriteError);
      expect((err as DiskWriteError).errno).toBe('ENOENT');
      expect((err as DiskWriteError).path).toBe(final);
    }
    expect(existsSync(join(root, 'missing'))).toBe(false);
  });

  it('publishTempSync links a finished file once and removes the temporary file either way', () => {
    const dir = join(root, 'link');
    mkdirSync(dir);
    const final = join(dir, 'obj');
    const t1 = tempPathFor(final);
    writeFileSync(t1, 'one');
    expect(publishTempSync(t1, final)).toBe(true);
    const t2 = tempPathFor(final);
    writeFileSync(t2, 'two');
    expect(publishTempSync(t2, final)).toBe(false);
    expect(readFileSync(final, 'utf8')).toBe('one');
    expect(hidden(dir)).toEqual([]);
  });

  it('DirectoryStorage: has, put of bytes in a new directory, put of a prepared file by rename', async () => {
    const storage = await DirectoryStorage.open(join(root, 'cache'), { dirs: ['nar'] });
    expect(await storage.has('a/b.narinfo')).toBe(false);
    expect(await storage.put('a/b.narinfo', 'x', { contentType: 'text/plain' })).toBe(true);
    expect(await storage.has('a/b.narinfo')).toBe(true);
    const tmp = await storage.tempFile('nar/n.nar');
    writeFileSync(tmp, 'nar');
    expect(await storage.put('nar/n.nar', { file: tmp }, { contentType: 'x', sameBytes: true })).toBe(true);
    expect(readFileSync(join(root, 'cache', 'nar', 'n.nar'), 'utf8')).toBe('nar');
    expect(hidden(join(root, 'cache', 'nar'))).toEqual([]);
  });
});

describe('GC root files', () => {
  it('makes the directory when needed, and never truncates an existing root', () => {
    const dir = join(root, 'roots', 'deep');
    addRootFileSync(dir, 'aaa-x');
    expect(readFileSync(join(dir, 'aaa-x')).length).toBe(0);
    writeFileSync(join(dir, 'bbb-y'), 'keep');
    addRootFileSync(dir, 'bbb-y');
    expect(readFileSync(join(dir, 'bbb-y'), 'utf8')).toBe('keep');
  });

  it('a root that cannot be written is a DiskWriteError naming it', () => {
    // A regular file where the directory should be.
    const blocker = join(root, 'roots-blocked');
    writeFileSync(blocker, '');
    expect(() => addRootFileSync(blocker, 'ccc-z')).toThrow(DiskWriteError);
  });
});

describe('compressed build logs', () => {
  const pool = new WorkerPool({ threads: 1 });
  afterAll(() => pool.close());

  it('small and large logs alike: the .bz2 holds the text, the plain file is gone, no temporary file stays', async () => {
    // Random bytes do not compress: the large one goes past SMALL_FILE compressed too.
    for (const text of [Buffer.from('hello\n'), randomBytes(2 * SMALL_FILE)]) {
      const dir = join(root, 'logs', `l${text.length}`);
      mkdirSync(dir, { recursive: true });
      const plain = join(dir, 'drv');
      writeFileSync(plain, text);
      // Compressing hands the buffer to a worker (detaching it): the caller's copy is compared.
      const target = await writeCompressedBuildLog(pool, plain, Buffer.from(text), true);
      expect(target).toBe(`${plain}.bz2`);
      expect(existsSync(plain)).toBe(false);
      expect((await pool.decompress(readFileSync(target), 'bzip2')).equals(text)).toBe(true);
      expect(readdirSync(dir)).toEqual(['drv.bz2']);
    }
  });

  it('a step that printed nothing gets its directory made', async () => {
    const plain = join(root, 'logs', 'new-dir', 'sub', 'drv');
    const target = await writeCompressedBuildLog(pool, plain, Buffer.alloc(0), false);
    expect(existsSync(target)).toBe(true);
  });
});
