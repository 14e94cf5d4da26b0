/**
 * Moving store paths between stores (the host's, or a builder's private one)
 * in `nix-store --export` format, without trusting the sender.
 *
 * importVerified parses the incoming stream (each NAR strictly validated and
 * hashed as it streams), checks every entry against what the receiver asked
 * for, and only then imports it (over the store's serve session). To honour "nothing is imported
 * unless everything checks out" without holding NARs in memory, the stream is
 * spooled to a temporary file while it is verified; Nix's own importer would
 * commit earlier entries before seeing a bad later one.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NarHashMismatchError, PathNotInStoreError, UnexpectedStorePathError } from '../errors/index.ts';
import { exportFromFilesystem, exportOrder, parseExport } from '../nix/export.ts';
import type { ExportEntry } from '../nix/export.ts';
import { Hash, parseHash } from '../nix/hash.ts';
import type { ByteSource } from '../nix/nar-reader.ts';
import { servePool } from '../nix/serve-session.ts';
import type { NixStoreHandle } from './private-store.ts';

export interface ExpectedNar {
  /** Any form Nix prints: `sha256:<base32|base16>`, SRI `sha256-<base64>`, or a Hash. */
  narHash: Hash | string;
  narSize: number;
}

export interface ImportOptions {
  /** Fail when an expected path is not in the stream (default true). */
  requireAll?: boolean;
  /** Where to spool the verified stream (default: the OS temp dir). */
  spoolDir?: string;
}

function toHash(h: Hash | string): Hash {
  return typeof h === 'string' ? parseHash(h, 'sha256') : h;
}

function sameHash(a: Hash, b: Hash): boolean {
  return a.algo === b.algo && Buffer.compare(Buffer.from(a.bytes), Buffer.from(b.bytes)) === 0;
}

/**
 * Imports an export stream into `store`, accepting exactly the paths in
 * `expected` with exactly their NAR hash and size. Any deviation (a path not
 * expected or sent twice, a NAR whose hash or size differ, an expected path
 * missing, a malformed stream) rejects the whole transfer before anything is
 * imported: UnexpectedStorePathError, NarHashMismatchError, NixFormatError.
 * Returns the imported entries, in stream order.
 */
export async function importVerified(
  store: NixStoreHandle,
  stream: ByteSource,
  expected: ReadonlyMap<string, ExpectedNar>,
  options: ImportOptions = {},
): Promise<ExportEntry[]> {
  const wanted = new Map([...expected].map(([p, e]) => [p, { narHash: toHash(e.narHash), narSize: e.narSize }]));
  const dir = await mkdtemp(join(options.spoolDir ?? tmpdir(), 'hydrant-import-'));
  const spool = join(dir, 'export');
  try {
    const fh = await open(spool, 'wx', 0o600);
    const entries: ExportEntry[] = [];
    try {
      const tee = (async function* () {
        for await (const chunk of stream) {
          await fh.write(chunk);
          yield chunk;
        }
      })();
      const seen = new Set<string>();
      for await (const e of parseExport(tee)) {
        const want = wanted.get(e.path);
        if (want === undefined) throw new UnexpectedStorePathError(e.path, 'unexpected');
        if (seen.has(e.path)) throw new UnexpectedStorePathError(e.path, 'duplicate');
        seen.add(e.path);
        if (e.narSize !== want.narSize || !sameHash(e.narHash, want.narHash)) {
          throw new NarHashMismatchError(
            e.path,
            { narHash: want.narHash.format('base32'), narSize: want.narSize },
            { narHash: e.narHash.format('base32'), narSize: e.narSize },
          );
        }
        entries.push(e);
      }
      if (options.requireAll ?? true) {
        for (const p of wanted.keys()) if (!seen.has(p)) throw new UnexpectedStorePathError(p, 'missing');
      }
    } finally {
      await fh.close();
    }
    if (entries.length > 0) await servePool(store).use((session) => session.importExport(createReadStream(spool)));
    return entries;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** What a store records about a valid path, as transfers need it. */
export interface StorePathInfo {
  path: string;
  narHash: Hash;
  narSize: number;
  deriver: string | null;
  references: string[];
}

/**
 * Exact per-path metadata of valid paths in `store`, in the order asked (a
 * .drv is the .drv itself), over the store's serve session. Throws
 * PathNotInStoreError naming the paths that are not valid.
 */
export async function queryPathInfos(store: NixStoreHandle, paths: readonly string[]): Promise<StorePathInfo[]> {
  if (paths.length === 0) return [];
  const served = new Map((await servePool(store).use((session) => session.queryPathInfos(paths))).map((i) => [i.path, i]));
  const missing = paths.filter((p) => !served.has(p));
  if (missing.length > 0) throw new PathNotInStoreError(missing);
  return paths.map((p) => {
    const i = served.get(p)!;
    return { path: i.path, narHash: parseHash(i.narHash), narSize: i.narSize, deriver: i.deriver, references: i.references };
  });
}

export interface ExportOptions {
  /** Export the closure of `paths` rather than just them (default false). */
  closure?: boolean;
}

/**
 * `nix-store --export` of valid paths of `store`, byte-identical to Nix's
 * (same order: references first), produced by dumping the paths' files from
 * where this process sees them. Each NAR is checked against the hash the
 * store recorded; a mismatch fails the stream with NarHashMismatchError
 * before that entry is complete.
 */
export async function* exportPaths(store: NixStoreHandle, paths: readonly string[], options: ExportOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  let all = [...new Set(paths)];
  if (options.closure && all.length > 0) {
    const { stdout } = await store.runChecked('nix-store', ['--query', '--requisites', ...all]);
    all = stdout.toString('utf8').split('\n').filter(Boolean);
  }
  const infos = new Map((await queryPathInfos(store, all)).map((i) => [i.path, i]));
  const order = exportOrder(infos.keys(), (p) => infos.get(p)!.references);
  yield* exportFromFilesystem(
    order.map((p) => {
      const i = infos.get(p)!;
      return { path: i.path, references: i.references, deriver: i.deriver, expected: { narHash: i.narHash, narSize: i.narSize } };
    }),
    (p) => store.realPath(p),
  );
}
