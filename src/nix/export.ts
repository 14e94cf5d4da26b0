/**
 * Nix's `nix-store --export` / `--import` format, streamed both ways.
 *
 * Checked byte for byte against `nix-store --export` (Nix 2.8):
 *
 *   export   = { u64(1) entry } u64(0)
 *   entry    = nar u64(0x4558494e) str(path) u64(n) str(ref)*n str(deriver | "") u64(0)
 *
 * with u64 little-endian and str() the NAR string encoding (length, bytes,
 * zero padding to 8). References are written sorted (Nix's StorePathSet) and
 * include the path itself when it refers to itself. The u64(0) closing an
 * entry is the "no legacy signature" flag: `nix-store --import` also accepts
 * u64(1) str(signature) there, and ignores the signature; so does the parser.
 *
 * NARs are never held in memory: the writer streams them from a ByteSource
 * (typically narChunks of the path), the parser validates each one with the
 * strict NAR parser and hashes exactly its bytes as they go by.
 */
import { createHash } from 'node:crypto';
import type { Hash as NodeHash } from 'node:crypto';
import { NarHashMismatchError, NixFormatError } from '../errors/index.ts';
import { Hash } from './hash.ts';
import { NarByteReader, parseNar } from './nar-reader.ts';
import type { ByteSource, NarEvent } from './nar-reader.ts';
import { narChunks, narString } from './nar-writer.ts';
import type { NarWriteOptions } from './nar-writer.ts';
import { parseStorePath, sortStorePaths } from './store-path.ts';

export const EXPORT_MAGIC = 0x4558494e;

/** What the export format carries about a path besides its NAR. */
export interface ExportPathInfo {
  path: string;
  references: readonly string[];
  /** null (or '') when unknown. */
  deriver: string | null;
}

export interface ExportWriteEntry extends ExportPathInfo {
  /** The path's NAR, streamed (e.g. narChunks of the path). */
  nar: ByteSource;
  /** When given, the NAR is hashed as it is written and the stream fails with NarHashMismatchError (before the entry's trailer) if it differs. */
  expected?: { narHash: Hash; narSize: number };
}

/** A parsed entry: its metadata plus the hash and size of the NAR actually received. */
export interface ExportEntry {
  path: string;
  references: string[];
  deriver: string | null;
  narHash: Hash;
  narSize: number;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** The bytes following an entry's NAR. */
export function exportTrailer(info: ExportPathInfo): Buffer {
  const refs = sortStorePaths(info.references);
  return Buffer.concat([
    u64(EXPORT_MAGIC),
    narString(info.path),
    u64(refs.length),
    ...refs.map((r) => narString(r)),
    narString(info.deriver ?? ''),
    u64(0),
  ]);
}

/**
 * Serialises entries in the given order (callers put references first, as
 * `nix-store --import` needs) into the export format, streaming each NAR.
 */
export async function* writeExport(entries: Iterable<ExportWriteEntry> | AsyncIterable<ExportWriteEntry>): AsyncGenerator<Buffer, void, undefined> {
  for await (const e of entries) {
    yield u64(1);
    const h = e.expected ? createHash('sha256') : null;
    let size = 0;
    for await (const chunk of e.nar) {
      const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      h?.update(b);
      size += b.length;
      yield b;
    }
    if (h && e.expected) {
      const actual = Hash.fromBytes('sha256', h.digest());
      if (size !== e.expected.narSize || Buffer.compare(Buffer.from(actual.bytes), Buffer.from(e.expected.narHash.bytes)) !== 0) {
        throw new NarHashMismatchError(
          e.path,
          { narHash: e.expected.narHash.format('base32'), narSize: e.expected.narSize },
          { narHash: actual.format('base32'), narSize: size },
        );
      }
    }
    yield exportTrailer(e);
  }
  yield u64(0);
}

/**
 * `nix-store --export PATHS` from the filesystem: each path's NAR is dumped
 * from `realPath(path)` (where its files are visible to this process), with
 * the given metadata. Set `expected` on the infos to check the dumped NARs.
 */
export function exportFromFilesystem(
  infos: Iterable<ExportPathInfo & { expected?: ExportWriteEntry['expected'] }>,
  realPath: (storePath: string) => string = (p) => p,
  narOptions: NarWriteOptions = {},
): AsyncGenerator<Buffer, void, undefined> {
  const list = [...infos];
  return writeExport(
    (function* () {
      for (const i of list) yield { ...i, nar: narChunks(realPath(i.path), narOptions) };
    })(),
  );
}

/**
 * The order `nix-store --export` writes a set of paths in (Nix's exportPaths:
 * topoSortPaths reversed): a depth-first post-order over the paths in sorted
 * order, following references within the set, so every path comes after the
 * paths it refers to (what `nix-store --import` needs). Throws on a cycle.
 */
export function exportOrder(paths: Iterable<string>, referencesOf: (path: string) => readonly string[]): string[] {
  const items = sortStorePaths(paths);
  const inSet = new Set(items);
  const visited = new Set<string>();
  const parents = new Set<string>();
  const sorted: string[] = [];
  const visit = (p: string, parent: string | null): void => {
    if (parents.has(p)) throw new NixFormatError('store path graph', `cycle detected: ${p} <- ${parent}`);
    if (visited.has(p)) return;
    visited.add(p);
    parents.add(p);
    for (const r of sortStorePaths(referencesOf(p))) if (r !== p && inSet.has(r)) visit(r, p);
    sorted.push(p);
    parents.delete(p);
  };
  for (const p of items) visit(p, null);
  return sorted;
}

function exportError(message: string, offset: number): NixFormatError {
  return new NixFormatError('nix-store --export', `${message} (at byte ${offset})`);
}

/**
 * Feeds a NarByteReader and hashes, on request, exactly the bytes the reader
 * has consumed. The reader asks for a new chunk only once it has consumed the
 * previous one entirely, so at most one chunk is held here.
 */
class HashingTap {
  private current: Buffer = Buffer.alloc(0);
  private currentStart = 0;
  private hashedTo = 0;
  private hash: NodeHash | null = null;
  private hashStart = 0;
  readonly source: AsyncIterable<Uint8Array>;

  constructor(input: ByteSource) {
    const self = this;
    this.source = {
      async *[Symbol.asyncIterator]() {
        let start = 0;
        for await (const c of input) {
          const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
          self.flushCurrent();
          self.current = chunk;
          self.currentStart = start;
          start += chunk.length;
          yield chunk;
        }
        self.flushCurrent();
        self.current = Buffer.alloc(0);
      },
    };
  }

  /** The reader finished the current chunk: hash what is left of it. */
  private flushCurrent(): void {
    this.hashTo(this.currentStart + this.current.length);
  }

  private hashTo(offset: number): void {
    if (this.hash === null || offset <= this.hashedTo) return;
    const from = Math.max(this.hashedTo, this.currentStart) - this.currentStart;
    this.hash.update(this.current.subarray(from, offset - this.currentStart));
    this.hashedTo = offset;
  }

  begin(offset: number): void {
    this.hash = createHash('sha256');
    this.hashStart = offset;
    this.hashedTo = offset;
  }

  end(offset: number): { hash: Hash; size: number } {
    this.hashTo(offset);
    const digest = this.hash!.digest();
    this.hash = null;
    return { hash: Hash.fromBytes('sha256', digest), size: offset - this.hashStart };
  }
}

const MAX_PATH_LENGTH = 4096;
const MAX_REFERENCES = 1 << 20;

export interface ParseExportOptions {
  /** Sees every NAR event of every entry (file contents as slices of the input), e.g. to restore or inspect. */
  onNarEvent?: (event: NarEvent) => void | Promise<void>;
}

/**
 * Parses an export stream in constant memory, yielding each entry once its
 * trailer has been read, with the SHA-256 and size of its NAR as received.
 * Every NAR is validated by the strict NAR parser; framing, store paths and
 * trailing data are checked. Errors are NixFormatError('nix-store --export').
 * Whether the entries are the wanted ones is the caller's business (see
 * transfer.ts).
 */
export async function* parseExport(source: ByteSource, options: ParseExportOptions = {}): AsyncGenerator<ExportEntry, void, undefined> {
  const tap = new HashingTap(source);
  const r = NarByteReader.from(tap.source);
  let index = 0;
  const context = (e: unknown, where: string): unknown => {
    if (e instanceof NixFormatError && e.format !== 'nix-store --export') {
      return new NixFormatError('nix-store --export', `entry ${index}${where}: ${e.message}`, { cause: e });
    }
    return e;
  };
  const readU64 = async (what: string): Promise<number> => r.u64(what);
  const readPath = async (what: string): Promise<string> => {
    const at = r.offset;
    const s = (await r.string(MAX_PATH_LENGTH, what)).toString('utf8');
    try {
      parseStorePath(s);
    } catch (e) {
      throw exportError(`${what} is not a store path: ${JSON.stringify(s)}`, at);
    }
    return s;
  };
  try {
    for (;;) {
      const at = r.offset;
      const marker = await readU64('entry marker');
      if (marker === 0) break;
      if (marker !== 1) throw exportError(`expected an entry marker (0 or 1), found ${marker}: not an export stream`, at);
      tap.begin(r.offset);
      try {
        for await (const ev of parseNar(r, { trailing: 'allow' })) if (options.onNarEvent) await options.onNarEvent(ev);
      } catch (e) {
        throw context(e, ' (NAR)');
      }
      const { hash, size } = tap.end(r.offset);
      let path = '';
      try {
        const magicAt = r.offset;
        const magic = await readU64('export magic');
        if (magic !== EXPORT_MAGIC) throw exportError(`bad export magic 0x${magic.toString(16)} (expected 0x${EXPORT_MAGIC.toString(16)})`, magicAt);
        path = await readPath('store path');
        const countAt = r.offset;
        const count = await readU64('reference count');
        if (count > MAX_REFERENCES) throw exportError(`implausible reference count ${count}`, countAt);
        const references: string[] = [];
        for (let i = 0; i < count; i++) references.push(await readPath('reference'));
        const derAt = r.offset;
        const deriverRaw = (await r.string(MAX_PATH_LENGTH, 'deriver')).toString('utf8');
        if (deriverRaw !== '') {
          try {
            parseStorePath(deriverRaw);
          } catch {
            throw exportError(`deriver is not a store path: ${JSON.stringify(deriverRaw)}`, derAt);
          }
        }
        const sigAt = r.offset;
        const sig = await readU64('signature flag');
        if (sig === 1) await r.string(MAX_PATH_LENGTH, 'legacy signature');
        else if (sig !== 0) throw exportError(`bad signature flag ${sig}`, sigAt);
        yield { path, references, deriver: deriverRaw === '' ? null : deriverRaw, narHash: hash, narSize: size };
      } catch (e) {
        throw context(e, path ? ` (${path})` : ' (trailer)');
      }
      index++;
    }
    if (!(await r.atEnd())) throw exportError('trailing data after the end of the export', r.offset);
  } catch (e) {
    throw context(e, '');
  } finally {
    await r.close();
  }
}
