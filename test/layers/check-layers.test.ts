import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { checkImports, checkTree, type Import, LAYERS, modulesUnder } from '../../scripts/check-layers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPT = path.join(ROOT, 'scripts/check-layers.ts');

/** A copy of src/ in a temporary directory with `line` planted first in `file`; returns the copy's root. */
function copyWith(file: string, line: string): string {
  const root = mkdtempSync(path.join(tmpdir(), 'hydrant-layers-'));
  cpSync(path.join(ROOT, 'src'), path.join(root, 'src'), { recursive: true });
  dirs.push(root);
  const p = path.join(root, file);
  writeFileSync(p, `${line}\n${readFileSync(p, 'utf8')}`);
  return root;
}
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('layer check', () => {
  it('passes on the tree', () => {
    expect(checkTree(ROOT)).toEqual([]);
  });

  it('lists every room under src/ that holds modules, once', () => {
    const rooms = new Set(modulesUnder(ROOT, 'src').map((f) => f.split('/')[1]!));
    expect([...LAYERS].sort()).toEqual([...rooms].sort());
  });

  it('fails on an upward import, naming the file, the line and the import', () => {
    const v = checkTree(copyWith('src/nix/hash.ts', "import type { Command } from '../cli/command.ts';"));
    expect(v.map((x) => x.kind)).toEqual(['upward']);
    expect(v[0]!.message).toContain('src/nix/hash.ts:1');
    expect(v[0]!.message).toContain("'../cli/command.ts'");
    expect(v[0]!.message).toContain('nix may not import cli');
  });

  it('fails on an import cycle, naming the modules', () => {
    const v = checkTree(copyWith('src/nix/hash.ts', "import './store-path.ts';"));
    expect(v.map((x) => x.kind)).toEqual(['cycle']);
    expect(v[0]!.message).toContain('src/nix/hash.ts');
    expect(v[0]!.message).toContain('src/nix/store-path.ts');
  });

  it('exits non-zero from the command line', () => {
    const root = copyWith('src/util/heap.ts', "export { HydrantError } from '../errors/index.ts';\nimport('../cli/main.ts');");
    const r = spawnSync(process.execPath, ['--import', 'tsx', SCRIPT, root], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("src/util/heap.ts:2: upward import '../cli/main.ts'");
  });

  it('checks synthetic imports: upward, cycles, allow-list entries that no longer match', () => {
    const imp = (from: string, to: string): Import => ({ from, to, specifier: to, line: 1 });
    const layers = ['low', 'high'];
    const allowed = new Map([
      ['src/low/b.ts -> src/high/x.ts', 'being moved'],
      ['src/low/gone.ts -> src/high/x.ts', 'already moved'],
    ]);
    const v = checkImports(
      [
        imp('src/high/x.ts', 'src/low/a.ts'), // down: fine
        imp('src/low/a.ts', 'src/high/x.ts'), // up
        imp('src/low/b.ts', 'src/high/x.ts'), // up, allowed
        imp('src/low/c.ts', 'src/low/d.ts'),
        imp('src/low/d.ts', 'src/low/e.ts'),
        imp('src/low/e.ts', 'src/low/c.ts'),
        imp('src/other/f.ts', 'src/low/a.ts'),
        imp('src/low/g.ts', 'test/sim/memory-store.ts'),
        imp('test/sim/memory-store.ts', 'src/high/x.ts'), // outside src/: not checked
      ],
      layers,
      allowed,
    );
    expect(v.map((x) => x.message)).toEqual([
      "src/low/a.ts:1: upward import 'src/high/x.ts' (src/high/x.ts): low may not import high, which is above it in the layer order",
      'src/other/f.ts:1: room src/other is not in the layer order (scripts/check-layers.ts LAYERS)',
      "src/low/g.ts:1: import 'test/sim/memory-store.ts' (test/sim/memory-store.ts) leaves src/",
      "allow-list entry 'src/low/gone.ts -> src/high/x.ts' matches no upward import: remove it",
      'import cycle: src/high/x.ts -> src/low/a.ts -> src/high/x.ts',
      'import cycle: src/low/c.ts -> src/low/d.ts -> src/low/e.ts -> src/low/c.ts',
    ]);
  });
});
