// The compiled copy of src/ that bin/hydrant.js runs (docs/ARCHITECTURE.md,
// "Running TypeScript"). Plain JavaScript: it runs before any loader.
//
// Running src/ through tsx costs every start a loader thread that every module
// passes through (about 1.5 s of CPU for the runner's few hundred modules). So
// the entry runs JavaScript compiled by esbuild (tsx's own, same options) into
// dist/<key>/src/, where <key> is a hash of every file under src/, of
// tsconfig.json, of this file and of esbuild's version: a build is found only
// for the sources it was made from, so an edited source is never run stale;
// it gets a new build on the next start. Files other than .ts are copied, so
// each module finds its SQL, UI and Nix files beside it as in src/.
//
// When no build can be made (a read-only checkout, another process building
// the same key, HYDRANT_TSX=1), the entry runs the sources through tsx as
// before: slower, never wrong.
import { createHash } from 'node:crypto';
import {
  copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const THIS_FILE = fileURLToPath(import.meta.url);

/** A build not started (nor kept alive) for this long is removed when another one is made. */
export const UNUSED_MS = 60 * 60 * 1000;
/** A running process refreshes its build's mtime this often, so it outlives UNUSED_MS. */
export const KEEP_ALIVE_MS = 10 * 60 * 1000;
/** A lock older than this is left by a process that died building. */
const LOCK_STALE_MS = 2 * 60 * 1000;

/** esbuild as tsx resolves it (tsx is a dependency; esbuild is tsx's). */
function esbuildRequire(root) {
  return createRequire(createRequire(path.join(root, 'package.json')).resolve('tsx/package.json'));
}

/** Every file under dir, as sorted paths relative to it (with '/'). Walked by hand: Node 20.0's readdirSync ignores `recursive`. */
function filesUnder(dir, prefix = '') {
  const out = [];
  for (const d of readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === '' ? d.name : `${prefix}/${d.name}`;
    if (d.isDirectory()) out.push(...filesUnder(dir, rel));
    else if (d.isFile()) out.push(rel);
  }
  return prefix === '' ? out.sort() : out;
}

/** The key of the build the sources under root/src need now (see the top of this file). */
export function sourceKey(root = ROOT) {
  const h = createHash('sha256');
  const add = (name, bytes) => h.update(`${name}\0${bytes.length}\0`).update(bytes);
  add('compiled.mjs', readFileSync(THIS_FILE));
  add('esbuild', Buffer.from(JSON.parse(readFileSync(esbuildRequire(root).resolve('esbuild/package.json'), 'utf8')).version));
  add('tsconfig.json', readFileSync(path.join(root, 'tsconfig.json')));
  const src = path.join(root, 'src');
  for (const f of filesUnder(src)) add(`src/${f}`, readFileSync(path.join(src, f)));
  return h.digest('hex').slice(0, 20);
}

/**
 * esbuild leaves import specifiers as written ('./x.ts'); Node needs the
 * compiled file's name. Rewrites the relative `.ts` specifiers of static
 * imports, export-froms and import() in esbuild's output (which always
 * prints them in double quotes), and checks the count against the imports
 * esbuild itself found, so that no specifier is missed or text mistaken for one.
 */
export function rewriteSpecifiers(code, expected) {
  let n = 0;
  const out = code.replace(/(\bfrom\s*|\bimport\s*\(\s*|\bimport\s*)"(\.{1,2}\/[^"\n]*?)\.ts"/g, (_, lead, stem) => {
    n++;
    return `${lead}"${stem}.js"`;
  });
  if (n !== expected) throw new Error(`rewrote ${n} import specifiers, esbuild found ${expected}`);
  return out;
}

/** Compiles root/src into dir/src (esbuild, one .js and .js.map per .ts), copies its other files, links package.json and bin/. */
async function compileInto(root, dir) {
  const esbuild = esbuildRequire(root)('esbuild');
  const src = path.join(root, 'src');
  const files = filesUnder(src);
  const entries = files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')).map((f) => path.join(src, f));
  const outdir = path.join(dir, 'src');
  const r = await esbuild.build({
    entryPoints: entries,
    outdir,
    outbase: src,
    absWorkingDir: root,
    tsconfig: path.join(root, 'tsconfig.json'),
    bundle: false,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    // As tsx: names kept, maps without the sources (they point back to src/).
    keepNames: true,
    sourcemap: 'linked',
    sourcesContent: false,
    metafile: true,
    write: false,
    logLevel: 'silent',
  });
  const relativeTs = new Map();
  for (const [out, meta] of Object.entries(r.metafile.outputs)) {
    relativeTs.set(path.resolve(root, out), meta.imports.filter((i) => /^\.{1,2}\//.test(i.path) && i.path.endsWith('.ts')).length);
  }
  for (const f of r.outputFiles) {
    mkdirSync(path.dirname(f.path), { recursive: true });
    if (f.path.endsWith('.js')) writeFileSync(f.path, rewriteSpecifiers(f.text, relativeTs.get(f.path) ?? 0));
    else writeFileSync(f.path, f.contents);
  }
  for (const f of files.filter((f) => !f.endsWith('.ts'))) {
    mkdirSync(path.dirname(path.join(outdir, f)), { recursive: true });
    copyFileSync(path.join(src, f), path.join(outdir, f));
  }
  // The two paths src/ reaches outside itself (src/cli/main.ts, src/util/hydrant-bin.ts).
  symlinkSync(path.join('..', '..', 'package.json'), path.join(dir, 'package.json'));
  symlinkSync(path.join('..', '..', 'bin'), path.join(dir, 'bin'));
}

/** Removes builds and leftovers of other keys not used for UNUSED_MS. */
function collect(dist, keep, now) {
  for (const name of readdirSync(dist)) {
    if (name === keep || name.startsWith('.lock-')) continue;
    const p = path.join(dist, name);
    try {
      if (now - statSync(p).mtimeMs > UNUSED_MS) rmSync(p, { recursive: true, force: true });
    } catch {
      // Removed by another process meanwhile.
    }
  }
}

const errno = (e) => (e && typeof e === 'object' && 'code' in e ? e.code : undefined);

/**
 * The build for the sources as they are now (its directory, and the URL of
 * its src/cli/main.js), made if needed; null when it cannot be had (the
 * caller runs the sources through tsx). `warn` gets a line when a build failed for a reason
 * other than an unwritable checkout or a concurrent build.
 */
export async function compiledMain({ root = ROOT, env = process.env, warn = (line) => process.stderr.write(`${line}\n`), now = Date.now() } = {}) {
  if (env.HYDRANT_TSX === '1') return null;
  const key = sourceKey(root);
  const dist = path.join(root, 'dist');
  const dir = path.join(dist, key);
  const main = path.join(dir, 'src', 'cli', 'main.js');
  const found = (() => {
    try {
      return statSync(dir);
    } catch {
      return null;
    }
  })();
  if (found) {
    if (now - found.mtimeMs > KEEP_ALIVE_MS) keepAlive(dir);
    return { dir, main: pathToFileURL(main).href };
  }
  const lock = path.join(dist, `.lock-${key}`);
  try {
    mkdirSync(dist, { recursive: true });
    mkdirSync(lock);
  } catch (e) {
    if (errno(e) !== 'EEXIST') return null; // a read-only checkout: run the sources
    let age = 0;
    try {
      age = now - statSync(lock).mtimeMs;
    } catch {
      // Released meanwhile.
    }
    if (age < LOCK_STALE_MS) return null; // another process is building this key
    rmSync(lock, { recursive: true, force: true });
    try {
      mkdirSync(lock);
    } catch {
      return null;
    }
  }
  const tmp = path.join(dist, `.tmp-${key}-${process.pid}`);
  try {
    rmSync(tmp, { recursive: true, force: true });
    await compileInto(root, tmp);
    // A source saved while compiling: this build may hold either version, so it is not kept.
    if (sourceKey(root) !== key) {
      rmSync(tmp, { recursive: true, force: true });
      return null;
    }
    renameSync(tmp, dir);
    collect(dist, key, now);
    return { dir, main: pathToFileURL(main).href };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (errno(e) === 'EACCES' || errno(e) === 'EROFS') return null;
    warn(`hydrant: compiling src/ into ${dist} failed, running the TypeScript sources through tsx instead: ${e?.message ?? e}`);
    return null;
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Marks the build as in use (its directory's mtime), so that collect() leaves it alone. */
export function keepAlive(dir) {
  try {
    const t = new Date();
    utimesSync(dir, t, t);
  } catch {
    // Removed, or not ours to touch: nothing to keep alive.
  }
}
