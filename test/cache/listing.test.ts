import { chmodSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listingOfPath } from '../../src/cache/listing.ts';
import { narListingJson } from '../../src/nix/nar-listing.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { buildFixtures, type Fixtures, tempDir } from './fixtures.ts';

let tmp: string;
let fx: Fixtures;

beforeAll(async () => {
  tmp = tempDir('hydrant-listing-');
  fx = await buildFixtures(tmp);
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The reference: parse the NAR the writer produces. */
const fromNar = (p: string) => narListingJson(narChunks(p));

describe('listingOfPath (metadata only)', () => {
  it('equals the listing parsed from the NAR for every fixture path', async () => {
    for (const p of fx.all) expect((await listingOfPath(p)).toString('utf8'), p).toBe((await fromNar(p)).toString('utf8'));
  });

  it('gets offsets right across padding, modes, empty files and directories', async () => {
    const root = join(tmp, 'tree');
    mkdirSync(join(root, 'd/empty'), { recursive: true });
    for (let size = 0; size <= 17; size++) writeFileSync(join(root, 'd', `f${size}`), Buffer.alloc(size, 0x61));
    writeFileSync(join(root, 'group-exec-only'), 'x');
    chmodSync(join(root, 'group-exec-only'), 0o645);
    writeFileSync(join(root, 'owner-exec'), 'x');
    chmodSync(join(root, 'owner-exec'), 0o744);
    symlinkSync('d/f3', join(root, 'l'));
    symlinkSync('x'.repeat(1000), join(root, 'long-target'));
    writeFileSync(join(root, 'B-upper-sorts-first'), '');
    expect((await listingOfPath(root)).toString('utf8')).toBe((await fromNar(root)).toString('utf8'));
    // A single file and a single symlink as the root.
    expect(await listingOfPath(join(root, 'd/f9'))).toEqual(await fromNar(join(root, 'd/f9')));
    expect(await listingOfPath(join(root, 'l'))).toEqual(await fromNar(join(root, 'l')));
  });

  it('keeps names that are not UTF-8 byte for byte', async () => {
    const root = join(tmp, 'latin1');
    mkdirSync(root);
    writeFileSync(Buffer.concat([Buffer.from(`${root}/`), Buffer.from([0xe9, 0x74, 0xe9])]), 'summer');
    const ours = await listingOfPath(root);
    expect(ours).toEqual(await fromNar(root));
    expect(ours.includes(Buffer.from([0xe9, 0x74, 0xe9]))).toBe(true);
  });
});
