import { constants } from 'node:fs';
import { lstat, open, realpath, stat } from 'node:fs/promises';
import { posix } from 'node:path';
import { UnsafePathError } from '../errors/index.ts';
import { hashFile } from './hash.ts';
import { isStorePath, storePathName } from './store-path.ts';

/**
 * Reads what a build left in `<output>/nix-support/` for Hydra (REFERENCE §2):
 * hydra-build-products, hydra-release-name, hydra-metrics, failed. Outputs
 * are untrusted: nothing here throws on bad content; bad lines and unsafe
 * paths are skipped (as Hydra does) and reported in `rejected`.
 */

/** A row for Hydra's BuildProducts table. */
export interface BuildProduct {
  type: string;
  subtype: string;
  /** Absolute, lexically canonical path as declared (not symlink-resolved). */
  path: string;
  /** Base name of `path`; '' when the product is the output itself. */
  name: string;
  defaultPath: string;
  /** Regular files only (after following symlinks inside the output); else null. */
  fileSize: number | null;
  /** sha256 of the file contents, base16; regular files only. */
  sha256hash: string | null;
}

export interface BuildMetric {
  name: string;
  value: number;
  unit: string;
}

export interface Rejection {
  file: string;
  line: number;
  text: string;
  reason: string;
}

export interface NixSupport {
  /** True when hydra-build-products exists (even if empty): then no default products. */
  explicitProducts: boolean;
  products: BuildProduct[];
  releaseName: string | null;
  metrics: BuildMetric[];
  failed: boolean;
  rejected: Rejection[];
}

/** Larger nix-support files are ignored: a build must not make the runner load gigabytes. */
export const MAX_SUPPORT_FILE_BYTES = 4 * 1024 * 1024;

// Hydra's grammar: type, subtype, path (maybe double-quoted), optional default path.
const PRODUCT_RE = /^([A-Za-z0-9_-]+)[ \t]+([A-Za-z0-9_-]+)[ \t]+("[^"]+"|[^\s"]+)(?:[ \t]+(\S+))?$/;

export interface ProductLine {
  line: number;
  type: string;
  subtype: string;
  path: string;
  defaultPath: string;
}

/** Parses hydra-build-products text; paths are not checked here. */
export function parseBuildProducts(text: string): { entries: ProductLine[]; malformed: Rejection[] } {
  const entries: ProductLine[] = [];
  const malformed: Rejection[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trimEnd();
    if (line.trim() === '') return;
    const m = PRODUCT_RE.exec(line);
    if (!m) {
      malformed.push({ file: 'hydra-build-products', line: i + 1, text: raw, reason: 'not "type subtype path [defaultPath]"' });
      return;
    }
    const p = m[3]!;
    entries.push({ line: i + 1, type: m[1]!, subtype: m[2]!, path: p.startsWith('"') ? p.slice(1, -1) : p, defaultPath: m[4] ?? '' });
  });
  return { entries, malformed };
}

/** Parses hydra-metrics: `name value [unit]` per line; a later line for the same name wins (as in Hydra). */
export function parseMetrics(text: string): { metrics: BuildMetric[]; malformed: Rejection[] } {
  const byName = new Map<string, BuildMetric>();
  const malformed: Rejection[] = [];
  text.split('\n').forEach((raw, i) => {
    const fields = raw.split(/[ \t\r]+/).filter(Boolean);
    if (fields.length === 0) return;
    const value = fields.length >= 2 ? Number(fields[1]) : NaN;
    if (fields.length < 2 || fields.length > 3 || !Number.isFinite(value)) {
      malformed.push({ file: 'hydra-metrics', line: i + 1, text: raw, reason: 'not "name value [unit]" with a finite number' });
      return;
    }
    byName.delete(fields[0]!);
    byName.set(fields[0]!, { name: fields[0]!, value, unit: fields[2] ?? '' });
  });
  return { metrics: [...byName.values()], malformed };
}

/** Lexical canonical form: `.`/`..`/`//` resolved, no trailing slash. */
function canonical(p: string): string {
  return posix.normalize(p).replace(/(.)\/+$/, '$1');
}

function inside(root: string, p: string): boolean {
  return p === root || p.startsWith(root === '/' ? '/' : `${root}/`);
}

/**
 * Resolves a build-supplied absolute path and checks that it stays inside one
 * of `roots`, both lexically (`..`) and after following symlinks. Paths are
 * store paths as the build saw them; `onDisk` maps one to where it is on
 * this host (a private store keeps `/nix/store` elsewhere). Returns the
 * lexically canonical path and the real one. Throws UnsafePathError.
 */
export async function resolveInside(roots: readonly string[], declared: string, onDisk: (p: string) => string = (p) => p): Promise<{ path: string; real: string }> {
  if (!declared.startsWith('/')) throw new UnsafePathError(declared, 'not an absolute path');
  if (declared.includes('\0')) throw new UnsafePathError(declared, 'contains a NUL byte');
  const canon = canonical(declared);
  const root = roots.map(canonical).find((r) => inside(r, canon));
  if (root === undefined) throw new UnsafePathError(declared, 'outside the build output');
  let real: string;
  try {
    real = await realpath(onDisk(canon));
  } catch {
    throw new UnsafePathError(declared, 'does not exist');
  }
  const realRoots = await Promise.all(roots.map((r) => realpath(onDisk(r)).catch(() => null)));
  if (!realRoots.some((r) => r !== null && inside(r, real))) {
    throw new UnsafePathError(declared, 'a symlink leads outside the build output');
  }
  return { path: canon, real };
}

/** Reads a regular (non-symlink) file of at most MAX_SUPPORT_FILE_BYTES; null when absent. */
async function readSupportFile(path: string, rejected: Rejection[], file: string): Promise<string | null> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    rejected.push({ file, line: 0, text: '', reason: code === 'ELOOP' ? 'is a symlink' : `cannot open: ${code}` });
    return null;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) return reject('not a regular file');
    if (st.size > MAX_SUPPORT_FILE_BYTES) return reject(`larger than ${MAX_SUPPORT_FILE_BYTES} bytes`);
    return (await handle.readFile()).toString('utf8');
  } finally {
    await handle.close();
  }
  function reject(reason: string): null {
    rejected.push({ file, line: 0, text: '', reason });
    return null;
  }
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

export interface ReadNixSupportOptions {
  /** Directories products may point into; default: the output itself. */
  allowedRoots?: readonly string[];
  /** Where a store path is on this host (default: where it says); for outputs in a private store. */
  onDisk?: (path: string) => string;
}

/** Reads one output's nix-support directory from disk. */
export async function readNixSupport(outputDir: string, options: ReadNixSupportOptions = {}): Promise<NixSupport> {
  const result: NixSupport = { explicitProducts: false, products: [], releaseName: null, metrics: [], failed: false, rejected: [] };
  const onDisk = options.onDisk ?? ((p: string) => p);
  const dir = posix.join(onDisk(outputDir), 'nix-support');
  // A symlinked nix-support could make us read files anywhere: Hydra reads NAR entries, which never follow links.
  const dirStat = await lstat(dir).catch(() => null);
  if (!dirStat) return result;
  if (!dirStat.isDirectory()) {
    result.rejected.push({ file: 'nix-support', line: 0, text: '', reason: 'not a directory' });
    return result;
  }
  result.failed = await exists(posix.join(dir, 'failed'));

  const release = await readSupportFile(posix.join(dir, 'hydra-release-name'), result.rejected, 'hydra-release-name');
  if (release !== null && release.trim() !== '') result.releaseName = release.trim();

  const metricsText = await readSupportFile(posix.join(dir, 'hydra-metrics'), result.rejected, 'hydra-metrics');
  if (metricsText !== null) {
    const { metrics, malformed } = parseMetrics(metricsText);
    result.metrics = metrics;
    result.rejected.push(...malformed);
  }

  const productsText = await readSupportFile(posix.join(dir, 'hydra-build-products'), result.rejected, 'hydra-build-products');
  if (productsText === null) return result;
  result.explicitProducts = true;
  const { entries, malformed } = parseBuildProducts(productsText);
  result.rejected.push(...malformed);
  const roots = options.allowedRoots ?? [outputDir];
  for (const entry of entries) {
    try {
      const { path, real } = await resolveInside(roots, entry.path, onDisk);
      const st = await stat(real);
      const regular = st.isFile();
      const digest = regular ? await hashFile('sha256', real) : null;
      result.products.push({
        type: entry.type,
        subtype: entry.subtype,
        path,
        name: roots.some((r) => canonical(r) === path) ? '' : posix.basename(path),
        defaultPath: entry.defaultPath,
        fileSize: digest ? digest.size : null,
        sha256hash: digest ? digest.hash.toBase16() : null,
      });
    } catch (e) {
      if (!(e instanceof UnsafePathError)) throw e;
      result.rejected.push({ file: 'hydra-build-products', line: entry.line, text: entry.path, reason: e.reason });
    }
  }
  return result;
}

export interface BuildOutput {
  name: string;
  path: string;
}

/**
 * nix-support of all outputs of a build, combined as Hydra does: products in
 * output order, any `failed` fails the build, the last release name and the
 * last value of each metric win. Products may point into any output of the
 * build. Without any hydra-build-products, every output that is a directory
 * becomes a `nix-build` product (subtype = output name, '' for `out`).
 */
export async function readBuildNixSupport(outputs: readonly BuildOutput[], onDisk?: (path: string) => string): Promise<NixSupport> {
  const roots = outputs.map((o) => o.path);
  const combined: NixSupport = { explicitProducts: false, products: [], releaseName: null, metrics: [], failed: false, rejected: [] };
  const metrics = new Map<string, BuildMetric>();
  for (const o of outputs) {
    const r = await readNixSupport(o.path, { allowedRoots: roots, onDisk });
    combined.explicitProducts ||= r.explicitProducts;
    combined.products.push(...r.products);
    combined.failed ||= r.failed;
    if (r.releaseName !== null) combined.releaseName = r.releaseName;
    for (const m of r.metrics) {
      metrics.delete(m.name);
      metrics.set(m.name, m);
    }
    combined.rejected.push(...r.rejected.map((x) => ({ ...x, file: `${o.name}:${x.file}` })));
  }
  combined.metrics = [...metrics.values()];
  if (!combined.explicitProducts) {
    for (const o of outputs) {
      const st = await lstat(onDisk ? onDisk(o.path) : o.path).catch(() => null);
      if (!st?.isDirectory()) continue;
      combined.products.push({
        type: 'nix-build',
        subtype: o.name === 'out' ? '' : o.name,
        path: o.path,
        name: isStorePath(o.path) ? storePathName(o.path) : posix.basename(o.path),
        defaultPath: '',
        fileSize: null,
        sha256hash: null,
      });
    }
  }
  return combined;
}
