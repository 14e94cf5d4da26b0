import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { nixSupport } from '../../src/builder/outputs.ts';
import type { JobContext } from '../../src/builder/job.ts';
import { readBuildNixSupport } from '../../src/nix/nix-support.ts';

const root = mkdtempSync(join(tmpdir(), 'hydrant-outputs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** What an output can be on disk. */
const KINDS = ['file', 'symlink', 'dir, empty', 'dir with products', 'dir with failed', 'dir with release name', 'missing'] as const;
type Kind = (typeof KINDS)[number];

function make(path: string, kind: Kind): void {
  if (kind === 'file') writeFileSync(path, 'x');
  if (kind === 'symlink') symlinkSync('/nix/store/elsewhere', path);
  if (kind.startsWith('dir')) mkdirSync(path);
  if (kind.startsWith('dir with')) mkdirSync(join(path, 'nix-support'));
  if (kind === 'dir with products') {
    writeFileSync(join(path, 'doc.txt'), 'doc');
    writeFileSync(join(path, 'nix-support', 'hydra-build-products'), `doc readme ${path.slice(path.indexOf('/nix/store/'))}/doc.txt\n`);
  }
  if (kind === 'dir with failed') writeFileSync(join(path, 'nix-support', 'failed'), '');
  if (kind === 'dir with release name') writeFileSync(join(path, 'nix-support', 'hydra-release-name'), 'rel-1.0\n');
}

describe('a builder’s nix-support report', () => {
  it('is what readBuildNixSupport reads, whichever outputs have a nix-support directory (or are no directory)', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.constantFrom(...KINDS), { minLength: 1, maxLength: 3 }), async (kinds) => {
        const store = join(root, String(n++));
        mkdirSync(join(store, 'nix/store'), { recursive: true });
        const realPath = (p: string): string => join(store, p);
        const outputs = kinds.map((kind, i) => ({ name: i === 0 ? 'out' : `out${i}`, path: `/nix/store/${'a'.repeat(31)}${i}-o${i}` }));
        kinds.forEach((kind, i) => make(realPath(outputs[i]!.path), kind));
        const ctx = { store: { realPath }, log: () => {} } as unknown as JobContext;
        const got = await nixSupport(ctx, outputs);
        const want = await readBuildNixSupport(outputs, realPath);
        expect(got.failed).toBe(want.failed);
        expect(got.releaseName ?? null).toBe(want.releaseName);
        expect(got.metrics).toEqual(want.metrics.map((m) => ({ name: m.name, value: m.value, unit: m.unit ?? undefined })));
        expect(got.products.map((p) => [p.type, p.subtype, p.path, p.name, p.defaultPath ?? '', p.fileSize ?? null])).toEqual(
          want.products.map((p) => [p.type, p.subtype, p.path, p.name, p.defaultPath, p.fileSize]),
        );
      }),
      { numRuns: 60 },
    );
  });
});
