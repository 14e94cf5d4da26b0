/**
 * Moving store paths between stores (the host's, or a builder's private one)
 * in `nix-store --export` format, without trusting the sender.
 *
 * importVerified parses the incoming stream (each NAR strictly validated and
 * hashed as it streams), checks every entry against what the receiver asked
 * for, and only then imports it (over the store's serve session). To honour "nothing is imported
 * unless everything checks out" without holding large NARs in memory, the
 * stream is spooled while it is verified: in memory up to SPOOL_MEMORY_LIMIT
 * bytes, in a temporary file beyond (files are costly to create and delete
 * by the thousand). Nix's own importer would commit earlier entries before
 * seeing a bad later one.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { asDiskWriteError } from '../errors/files.ts';
import { NarHashMismatchError, PathNotInStoreError, UnexpectedStorePathError } from '../errors/index.ts';
import { exportFromFilesystem, exportOrder, parseExport } from './export.ts';
import type { ExportEntry } from './export.ts';
import { Hash, parseHash } from './hash.ts';
import type { ByteSource } from './nar-reader.ts';
import { servePool } from './serve-session.ts';
import type { NixStoreHandle } from './private-store.ts';

export interface ExpectedNar {
  /** Any form Nix prints: `sha256:<base32|base16>`, SRI `sha256-<base64>`, or a Hash. */
  narHash: Hash | string;
  narSize: number;
}

export interface ImportOptions {
  /** Fail when an expected path is not in the stream (default true). */
  requireAll?: boolean;
  /** Where to spool a verified stream too large for memory (default: the OS temp dir). */
  spoolDir?: string;
  /** Bytes spooled in memory before a file is used (default SPOOL_MEMORY_LIMIT). */
  spoolMemoryLimit?: number;
  /** Called once the whole stream is verified, before anything is imported: throwing refuses the transfer. */
  beforeImport?: () => void | Promise<void>;
}

/** Bytes of an export stream held in memory while it is verified; more go to a file. */
export const SPOOL_MEMORY_LIMIT = 4 * 1024 * 1024;

/** Holds a stream's bytes while it is verified: in memory, spilling to a temporary file past the limit. */
class Spool {
  private chunks: Uint8Array[] | null = [];
  private bytes = 0;
  private dir: string | null = null;
  private fh: FileHandle | null = null;

  constructor(
    private readonly spoolDir: string,
    private readonly memoryLimit: number,
  ) {}

  async write(chunk: Uint8Array): Promise<void> {
    this.bytes += chunk.length;
    if (this.chunks && this.bytes <= this.memoryLimit) {
      this.chunks.push(chunk);
      return;
    }
    const file = join(this.dir ?? this.spoolDir, 'export');
    try {
      if (!this.fh) {
        this.dir = await mkdtemp(join(this.spoolDir, 'hydrant-import-'));
        this.fh = await open(join(this.dir, 'export'), 'wx', 0o600);
        for (const c of this.chunks ?? []) await this.fh.write(c);
        this.chunks = null;
      }
      await this.fh.write(chunk);
    } catch (e) {
      // A full disk: say which file (a write's own error names none).
      throw asDiskWriteError(e, 'the import spool file', this.dir ? join(this.dir, 'export') : file);
    }
  }

  /** Ends writing; the bytes can be read once after. */
  async finish(): Promise<void> {
    await this.fh?.close();
    this.fh = null;
  }

  async *read(): AsyncGenerator<Uint8Array> {
    if (this.chunks) yield* this.chunks;
    else yield* createReadStream(join(this.dir!, 'export'));
  }

  async dispose(): Promise<void> {
    await this.fh?.close().catch(() => {});
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
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
  const spool = new Spool(options.spoolDir ?? tmpdir(), options.spoolMemoryLimit ?? SPOOL_MEMORY_LIMIT);
  try {
    const entries: ExportEntry[] = [];
    try {
      const tee = (async function* () {
        for await (const chunk of stream) {
          await spool.write(chunk);
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
      await spool.finish();
    }
    await options.beforeImport?.();
    if (entries.length > 0) await servePool(store).use((session) => session.importExport(spool.read()));
    return entries;
  } finally {
    await spool.dispose();
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

/**
 * The NAR sizes of the joint closure of `paths` in `store`, summed: a
 * multi-output build's `closuresize` as Hydra records it (a path two
 * outputs both reach is counted once, so it is never below the outputs'
 * own sizes summed).
 */
export async function jointClosureSize(store: NixStoreHandle, paths: readonly string[]): Promise<number> {
  if (paths.length === 0) return 0;
  return servePool(store).use(async (session) => {
    const closure = await session.queryClosure(paths, false);
    const infos = await session.queryPathInfos(closure);
    return infos.reduce((n, i) => n + i.narSize, 0);
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
