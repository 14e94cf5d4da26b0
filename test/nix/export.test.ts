import { beforeAll, describe, expect, it } from 'vitest';
import { NarHashMismatchError, NixFormatError } from '../../src/errors/index.ts';
import { EXPORT_MAGIC, exportFromFilesystem, exportOrder, parseExport, writeExport } from '../../src/nix/export.ts';
import type { ExportEntry, ExportPathInfo } from '../../src/nix/export.ts';
import { parseHash } from '../../src/nix/hash.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { runNix } from '../helpers/nix.ts';
import { exportFixtures, hostPathInfo } from './export-fixtures.ts';
import type { ExportFixtures, PathInfoJson } from './export-fixtures.ts';

async function collect(gen: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of gen) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function parseAll(bytes: Buffer, chunk = 65536): Promise<ExportEntry[]> {
  const entries: ExportEntry[] = [];
  const source = (function* () {
    for (let i = 0; i < bytes.length; i += chunk) yield bytes.subarray(i, i + chunk);
  })();
  for await (const e of parseExport(source)) entries.push(e);
  return entries;
}

function infoOf(i: PathInfoJson): ExportPathInfo {
  return { path: i.path, references: i.references, deriver: i.deriver ?? null };
}

async function nixExport(paths: string[]): Promise<Buffer> {
  return (await runNix('nix-store', ['--export', ...paths])).stdout;
}

describe('nix-store --export format', () => {
  let fx: ExportFixtures;
  let infos: Map<string, PathInfoJson>;
  beforeAll(async () => {
    fx = await exportFixtures();
    infos = new Map((await hostPathInfo([fx.dep, fx.app, fx.single, fx.drv])).map((i) => [i.path, i]));
  });

  it('fixtures have what the tests rely on', () => {
    const app = infos.get(fx.app)!;
    expect(app.references).toEqual(expect.arrayContaining([fx.app, fx.dep]));
    expect(app.deriver).toBe(fx.drv);
    expect(infos.get(fx.drv)!.path).toBe(fx.drv);
    expect(infos.get(fx.drv)!.deriver).toBeUndefined();
    expect(infos.get(fx.drv)!.references.length).toBeGreaterThan(0);
  });

  for (const [name, pick] of [
    ['a single file path', (f: ExportFixtures) => [f.single]],
    ['a directory with symlink, executable and a 3 MB file', (f: ExportFixtures) => [f.dep]],
    ['a path with references (itself included) and a deriver', (f: ExportFixtures) => [f.app]],
    ['several paths, a .drv among them', (f: ExportFixtures) => [f.dep, f.app, f.single, f.drv]],
  ] as const) {
    it(`writes the same bytes as nix-store --export for ${name}`, async () => {
      const paths = exportOrder(pick(fx), (p) => infos.get(p)!.references);
      const ours = await collect(exportFromFilesystem(paths.map((p) => infoOf(infos.get(p)!)), undefined, { chunkSize: 4096 }));
      const theirs = await nixExport(paths);
      expect(ours.length).toBe(theirs.length);
      expect(ours.equals(theirs)).toBe(true);
    });
  }

  it('parses real nix-store --export output into path info matching nix path-info', async () => {
    const paths = [fx.app, fx.single, fx.drv, fx.dep];
    const entries = await parseAll(await nixExport(paths), 1000);
    // Nix writes references first whatever the argument order; exportOrder predicts it.
    expect(entries.map((e) => e.path)).toEqual(exportOrder(paths, (p) => infos.get(p)!.references));
    expect(entries.findIndex((e) => e.path === fx.dep)).toBeLessThan(entries.findIndex((e) => e.path === fx.app));
    for (const e of entries) {
      const i = infos.get(e.path)!;
      expect(e.narHash.toSri()).toBe(i.narHash);
      expect(e.narSize).toBe(i.narSize);
      expect(e.references).toEqual(i.references);
      expect(e.deriver).toBe(i.deriver ?? null);
    }
  });

  it('round-trips parse∘write whatever the chunking, and `nix-store --import`-style legacy signatures are skipped', async () => {
    const list = [fx.single, fx.dep, fx.app].map((p) => infoOf(infos.get(p)!));
    const bytes = await collect(exportFromFilesystem(list));
    for (const chunk of [7, 4093, 1 << 20]) {
      const entries = await parseAll(bytes, chunk);
      expect(entries.map(({ path, references, deriver }) => ({ path, references: [...references], deriver }))).toEqual(
        list.map((i) => ({ path: i.path, references: [...i.references].sort(), deriver: i.deriver })),
      );
      for (const e of entries) expect(e.narHash.toSri()).toBe(infos.get(e.path)!.narHash);
    }
    const one = await collect(exportFromFilesystem([infoOf(infos.get(fx.single)!)]));
    expect((await parseAll(one, 1))[0]!.path).toBe(fx.single);
    // Legacy signature present: flag 1 then a string, in place of the final 0 of the entry.
    const sig = Buffer.concat([one.subarray(0, one.length - 16), u64(1), str('sig'), u64(0)]);
    expect((await parseAll(sig))[0]!.path).toBe(fx.single);
  });

  it('writes empty exports like Nix', async () => {
    expect((await collect(writeExport([]))).equals(u64(0))).toBe(true);
    expect(await parseAll(u64(0))).toEqual([]);
  });

  describe('rejects corrupt input with a format error', () => {
    let good: Buffer;
    let narLen: number;
    beforeAll(async () => {
      good = await nixExport([fx.single]);
      narLen = infos.get(fx.single)!.narSize;
    });
    const cases: [string, (g: Buffer, narLen: number) => Buffer, RegExp][] = [
      ['empty input', () => Buffer.alloc(0), /truncated/],
      ['bad entry marker', (g) => Buffer.concat([u64(2), g.subarray(8)]), /entry marker/],
      ['not a NAR', (g) => Buffer.concat([u64(1), str('nix-archive-2'), g.subarray(8 + 24)]), /not a NAR/],
      ['corrupt NAR token', (g) => { const b = Buffer.from(g); b.write('X', 8 + 24 + 8); return b; }, /entry 0 \(NAR\).*expected '\('/],
      ['bad export magic', (g, n) => { const b = Buffer.from(g); b.writeUInt32LE(0x1234, 8 + n); return b; }, /bad export magic/],
      ['path not a store path', (g, n) => { const b = Buffer.from(g); b.write('/tmp', 8 + n + 16); return b; }, /not a store path/],
      ['truncated trailer', (g, n) => g.subarray(0, 8 + n + 12), /truncated/],
      ['missing end marker', (g) => g.subarray(0, g.length - 8), /truncated/],
      ['trailing data', (g) => Buffer.concat([g, Buffer.from('junk')]), /trailing data/],
      ['bad signature flag', (g) => Buffer.concat([g.subarray(0, g.length - 16), u64(7), u64(0)]), /signature flag/],
    ];
    for (const [name, corrupt, re] of cases) {
      it(name, async () => {
        const err = await parseAll(corrupt(good, narLen)).then(() => null, (e: unknown) => e);
        expect(err).toBeInstanceOf(NixFormatError);
        expect((err as NixFormatError).format).toBe('nix-store --export');
        expect((err as Error).message).toMatch(re);
      });
    }
  });

  it('checks the NAR it writes against an expected hash', async () => {
    const i = infos.get(fx.single)!;
    const wrong = parseHash(infos.get(fx.dep)!.narHash);
    const gen = writeExport([{ ...infoOf(i), nar: narChunks(i.path), expected: { narHash: wrong, narSize: i.narSize } }]);
    await expect(collect(gen)).rejects.toBeInstanceOf(NarHashMismatchError);
    const ok = writeExport([{ ...infoOf(i), nar: narChunks(i.path), expected: { narHash: parseHash(i.narHash), narSize: i.narSize } }]);
    expect((await collect(ok)).equals(await nixExport([fx.single]))).toBe(true);
  });

  it('uses the export magic Nix uses', async () => {
    const g = await nixExport([fx.single]);
    expect(g.readUInt32LE(8 + infos.get(fx.single)!.narSize)).toBe(EXPORT_MAGIC);
  });
});

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
function str(s: string): Buffer {
  const b = Buffer.from(s);
  return Buffer.concat([u64(b.length), b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
}
