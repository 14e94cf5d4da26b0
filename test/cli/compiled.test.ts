import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { compiledMain, rewriteSpecifiers, sourceKey, UNUSED_MS } from '../../bin/compiled.mjs';
import { HYDRANT_BIN } from '../../src/util/hydrant-bin.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const made: string[] = [];
afterAll(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A checkout of a two-command program: src/cli/main.ts imports greet.ts, imports late.ts on demand and reads data.txt beside it. */
function checkout(greeting = 'hello'): string {
  const root = mkdtempSync(path.join(tmpdir(), 'hydrant-compiled-'));
  made.push(root);
  mkdirSync(path.join(root, 'src/cli'), { recursive: true });
  mkdirSync(path.join(root, 'bin'));
  writeFileSync(path.join(root, 'package.json'), '{ "type": "module" }\n');
  copyFileSync(path.join(REPO, 'tsconfig.json'), path.join(root, 'tsconfig.json'));
  symlinkSync(path.join(REPO, 'node_modules'), path.join(root, 'node_modules'));
  writeGreet(root, greeting);
  writeFileSync(path.join(root, 'src/cli/late.ts'), "export const late: string = 'late';\n");
  writeFileSync(path.join(root, 'src/cli/data.txt'), 'data\n');
  writeFileSync(
    path.join(root, 'src/cli/main.ts'),
    [
      "import { readFileSync } from 'node:fs';",
      "import { greet, type Greeting } from './greet.ts';",
      "const g: Greeting = greet();",
      "const { late } = await import('./late.ts');",
      "const data = readFileSync(new URL('./data.txt', import.meta.url), 'utf8').trim();",
      'process.stdout.write(`${g} ${late} ${data}\\n`);',
      '',
    ].join('\n'),
  );
  return root;
}

function writeGreet(root: string, greeting: string): void {
  writeFileSync(path.join(root, 'src/cli/greet.ts'), `export type Greeting = string;\nexport function greet(): Greeting {\n  return '${greeting}';\n}\n`);
}

function runBuild(main: string): string {
  const r = spawnSync(process.execPath, [fileURLToPath(main)], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  return r.stdout;
}

const quiet = { warn: (line: string) => expect.unreachable(line) };

describe('bin/compiled.mjs: the compiled copy of src/ that hydrant runs', () => {
  it('compiles src/ to JavaScript that runs without a loader, with its other files beside it', async () => {
    const root = checkout();
    const build = await compiledMain({ root, env: {}, ...quiet });
    expect(build).not.toBeNull();
    expect(build!.dir).toBe(path.join(root, 'dist', sourceKey(root)));
    expect(runBuild(build!.main)).toBe('hello late data\n');
    const js = readFileSync(path.join(build!.dir, 'src/cli/main.js'), 'utf8');
    expect(js).toContain('from "./greet.js"');
    expect(js).toContain('import("./late.js")');
    expect(js).not.toContain(': Greeting');
    // The maps point back to the sources, so stack traces name src/*.ts lines.
    const map = JSON.parse(readFileSync(path.join(build!.dir, 'src/cli/main.js.map'), 'utf8')) as { sources: string[] };
    expect(path.resolve(build!.dir, 'src/cli', map.sources[0]!)).toBe(path.join(root, 'src/cli/main.ts'));
    expect(existsSync(path.join(build!.dir, 'src/cli/greet.ts'))).toBe(false);
    // A second start finds the same build.
    expect(await compiledMain({ root, env: {}, ...quiet })).toEqual(build);
  });

  it('never runs a build of other sources: an edit gets a new build, and the old content finds the old one', async () => {
    const root = checkout();
    const first = await compiledMain({ root, env: {}, ...quiet });
    writeGreet(root, 'bonjour');
    const second = await compiledMain({ root, env: {}, ...quiet });
    expect(second!.dir).not.toBe(first!.dir);
    expect(runBuild(second!.main)).toBe('bonjour late data\n');
    writeFileSync(path.join(root, 'src/cli/data.txt'), 'other\n'); // a file that is copied, not compiled
    const third = await compiledMain({ root, env: {}, ...quiet });
    expect(runBuild(third!.main)).toBe('bonjour late other\n');
    writeGreet(root, 'hello');
    writeFileSync(path.join(root, 'src/cli/data.txt'), 'data\n');
    expect(await compiledMain({ root, env: {}, ...quiet })).toEqual(first);
  });

  it('the key changes with any byte of any file under src/, or a new file', () => {
    const root = checkout();
    const files = ['src/cli/main.ts', 'src/cli/greet.ts', 'src/cli/late.ts', 'src/cli/data.txt'];
    const base = sourceKey(root);
    fc.assert(
      fc.property(fc.constantFrom(...files), fc.nat(), fc.integer({ min: 1, max: 255 }), (file, at, delta) => {
        const p = path.join(root, file);
        const original = readFileSync(p);
        const changed = Buffer.from(original);
        const i = at % changed.length;
        changed[i] = (changed[i]! + delta) % 256;
        try {
          writeFileSync(p, changed);
          expect(sourceKey(root)).not.toBe(base);
        } finally {
          writeFileSync(p, original);
        }
        expect(sourceKey(root)).toBe(base);
      }),
      { numRuns: 25 },
    );
    writeFileSync(path.join(root, 'src/cli/new.txt'), '');
    expect(sourceKey(root)).not.toBe(base);
  });

  it('leaves the sources to tsx when asked to, or while another process builds the same key', async () => {
    const root = checkout();
    expect(await compiledMain({ root, env: { HYDRANT_TSX: '1' }, ...quiet })).toBeNull();
    const lock = path.join(root, 'dist', `.lock-${sourceKey(root)}`);
    mkdirSync(lock, { recursive: true });
    expect(await compiledMain({ root, env: {}, ...quiet })).toBeNull();
    expect(readdirSync(path.join(root, 'dist'))).toEqual([path.basename(lock)]);
    // A lock left by a process that died building is taken over.
    const old = new Date(Date.now() - 10 * 60_000);
    utimesSync(lock, old, old);
    const build = await compiledMain({ root, env: {}, ...quiet });
    expect(runBuild(build!.main)).toBe('hello late data\n');
    expect(existsSync(lock)).toBe(false);
  });

  it('a source esbuild cannot compile is reported in one line, and nothing is kept', async () => {
    const root = checkout();
    writeFileSync(path.join(root, 'src/cli/late.ts'), 'export const late = ;\n');
    const lines: string[] = [];
    expect(await compiledMain({ root, env: {}, warn: (l) => lines.push(l) })).toBeNull();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^hydrant: compiling src\/ into .* failed, running the TypeScript sources through tsx instead: .*late\.ts/s);
    expect(readdirSync(path.join(root, 'dist'))).toEqual([]);
  });

  it('removes builds unused for an hour when it makes another, and keeps recent ones', async () => {
    const root = checkout();
    const first = await compiledMain({ root, env: {}, ...quiet });
    writeGreet(root, 'second');
    const second = await compiledMain({ root, env: {}, ...quiet });
    const stale = new Date(Date.now() - UNUSED_MS - 60_000);
    utimesSync(first!.dir, stale, stale);
    writeGreet(root, 'third');
    const third = await compiledMain({ root, env: {}, ...quiet });
    expect(readdirSync(path.join(root, 'dist')).sort()).toEqual([path.basename(second!.dir), path.basename(third!.dir)].sort());
  });

  it('rewrites exactly the relative .ts specifiers of imports, and refuses a count other than esbuild found', () => {
    const kinds = [
      (s: string) => `import { a } from "${s}";`,
      (s: string) => `import "${s}";`,
      (s: string) => `export * from "${s}";`,
      (s: string) => `const m = await import("${s}");`,
      (s: string) => `import {\n  a,\n  b\n} from "${s}";`,
    ];
    const name = fc.stringMatching(/^(\.\/|\.\.\/)([a-z-]+\/){0,2}[a-z-]+$/);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(kinds.length - 1), name, fc.boolean()), { maxLength: 8 }), (imports) => {
        const code = imports.map(([k, n, ts]) => kinds[k]!(ts ? `${n}.ts` : `${n}.js`)).join('\n');
        const expected = imports.filter(([, , ts]) => ts).length;
        const out = rewriteSpecifiers(`${code}\nconst f = new URL("./tasks.ts", import.meta.url);`, expected);
        expect(out).toBe(`${imports.map(([k, n]) => kinds[k]!(`${n}.js`)).join('\n')}\nconst f = new URL("./tasks.ts", import.meta.url);`);
        expect(() => rewriteSpecifiers(code, expected + 1)).toThrow(/rewrote/);
      }),
    );
  });

  it('the hydrant entry runs the build of this checkout, whose workers find their compiled tasks module', async () => {
    const r = spawnSync(HYDRANT_BIN, ['--version'], { encoding: 'utf8', env: { ...process.env, HYDRANT_TSX: '' } });
    expect(r.status).toBe(0);
    // null only while another test's hydrant holds the lock to build it.
    let build = await compiledMain({ root: REPO, env: {}, ...quiet });
    while (build === null) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      build = await compiledMain({ root: REPO, env: {}, ...quiet });
    }
    const dir = path.join(REPO, 'dist', sourceKey(REPO));
    expect(build.dir).toBe(dir);
    expect(existsSync(path.join(dir, 'src/cli/main.js'))).toBe(true);
    expect(existsSync(path.join(dir, 'src/workers/tasks.js'))).toBe(true);
    expect(existsSync(path.join(dir, 'src/db/sql'))).toBe(true);
  });
});
