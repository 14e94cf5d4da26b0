import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { readWholeFile, SMALL_FILE } from '../../src/util/small-file.ts';

const dir = mkdtempSync(join(tmpdir(), 'hydrant-small-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('readWholeFile', () => {
  it('returns exactly the file, on both sides of SMALL_FILE', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.integer({ min: 0, max: 8192 }), fc.integer({ min: SMALL_FILE - 2, max: SMALL_FILE + 2 }), fc.integer({ min: SMALL_FILE + 3, max: 3 * SMALL_FILE })), async (len) => {
        const f = join(dir, `f${n++}`);
        const body = randomBytes(len);
        writeFileSync(f, body);
        // equals(): a deep toEqual of 100 KB takes seconds.
        expect((await readWholeFile(f)).equals(body)).toBe(true);
      }),
      { numRuns: 30 },
    );
  });

  it('a missing file rejects with ENOENT', async () => {
    await expect(readWholeFile(join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
