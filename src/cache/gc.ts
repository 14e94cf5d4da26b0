import { CacheGcUnsafeError, ConfigError } from '../errors/index.ts';
import { parseNarInfo } from '../nix/narinfo.ts';
import { HASH_PART_LENGTH, STORE_DIR } from '../nix/store-path.ts';
import { CACHE_INFO_FILE } from './layout.ts';
import type { CacheStorage, DeleteFailure, StoredEntry, UnfinishedUpload } from './storage.ts';

/**
 * `hydrant cache gc`: deletes what no GC root keeps alive from a binary
 * cache (the S3 backup plugin's collector, for directories and buckets).
 * The live paths are the closure of the roots, followed through the cache's
 * own narinfos (References), so no local store is needed. Choices (see
 * docs/CACHES.md, "Garbage collection"):
 * - roots the cache lacks are followed through the local store where it
 *   holds them (`localClosure`);
 * - a narinfo and `.ls` live with their path; a NAR while a live narinfo's
 *   URL names it; `log/<drv>` while the drv is a root or the Deriver of a
 *   live path; `realisations/…` while its outPath is live;
 * - objects younger than `minAge` are never deleted, and a young narinfo
 *   counts as a root, so what is kept never loses its references or NAR;
 * - `nix-cache-info` and objects of no known kind are kept (reported);
 * - narinfos are deleted first and NARs last, so a reader never finds a
 *   narinfo whose NAR is gone.
 */

export interface CacheGcOptions {
  storage: CacheStorage;
  /** Key prefix of the cache inside the storage: empty, or ending in `/`. */
  prefix: string;
  /** Basenames of the root store paths. */
  roots: readonly string[];
  /** Objects (and unfinished uploads) younger than this are left alone. */
  minAgeMs: number;
  dryRun: boolean;
  /** Undoes a Content-Encoding (narinfo-compression of S3 caches). */
  decode(body: Buffer, encoding: string | undefined): Promise<Buffer>;
  now?: Date;
  /** The store directory of the roots (default /nix/store). */
  storeDir?: string;
  /** Narinfos read at once (each a request to S3). */
  concurrency?: number;
  onProgress?(phase: 'read' | 'delete', done: number, total: number): void;
  /**
   * The local store's closure of the roots the cache lacks (full paths in,
   * full paths out); omitted where there is no local store.
   */
  localClosure?(paths: readonly string[]): Promise<string[]>;
}

export type ObjectKind = 'narinfo' | 'nar' | 'listing' | 'log' | 'realisation';

export interface Tally {
  count: number;
  bytes: number;
}

export interface CacheGcReport {
  /** Paths in the live closure found in the cache. */
  livePaths: number;
  /** Roots whose narinfo the cache lacks (not uploaded there, or drvs). */
  rootsMissing: string[];
  /** Paths of those roots' local closures found in the cache (kept, with their closures). */
  liveThroughLocalStore: number;
  /** Live objects kept (nix-cache-info included). */
  kept: Tally;
  /** Dead objects kept because they are younger than minAge. */
  young: Tally;
  /** Objects of no kind the cache format knows, kept. */
  unknown: string[];
  /** Dead objects deleted (or, in a dry run, that would be). */
  deleted: Tally;
  deletedByKind: Record<ObjectKind, number>;
  /** Keys deleted (or to be deleted), in deletion order. */
  deletedKeys: string[];
  /** Deletions the storage refused. */
  failures: DeleteFailure[];
  /** Unfinished multipart uploads older than minAge, aborted (or to be). */
  aborted: UnfinishedUpload[];
  /** Unfinished uploads younger than minAge (probably in progress), left alone. */
  uploadsInProgress: number;
}

const HASH = `[0-9a-df-np-sv-z]{${HASH_PART_LENGTH}}`;
const NARINFO_RE = new RegExp(`^(${HASH})\\.narinfo$`);
const LISTING_RE = new RegExp(`^(${HASH})\\.ls$`);
/** Nix's `nar/<filehash>.nar[.ext]`, and the S3 backup plugin's `<hash>.nar` beside the narinfo. */
const NAR_RE = new RegExp(`^(nar/[^/]+|${HASH}\\.nar(\\.[a-z0-9]+)?)$`);
const LOG_RE = /^log\/([^/]+)$/;
const REALISATION_RE = /^realisations\/([^/]+)\.doi$/;

/** The object kind of a key relative to the cache's prefix; null for nix-cache-info and unknown ones. */
export function objectKind(rel: string): ObjectKind | 'info' | null {
  if (rel === CACHE_INFO_FILE) return 'info';
  if (NARINFO_RE.test(rel)) return 'narinfo';
  if (LISTING_RE.test(rel)) return 'listing';
  if (NAR_RE.test(rel)) return 'nar';
  if (LOG_RE.test(rel)) return 'log';
  if (REALISATION_RE.test(rel)) return 'realisation';
  return null;
}

/** Refuses a prefix that would match keys of another prefix (`cache` also matches `cache-old/…`). */
export function checkPrefix(prefix: string): void {
  if (prefix !== '' && !prefix.endsWith('/')) throw new ConfigError(`--prefix '${prefix}' must end in '/' (or be empty): it would also match keys outside the cache`);
  if (prefix.startsWith('/')) throw new ConfigError(`--prefix '${prefix}' must not start with '/'`);
}

/** Parses `--min-age`: a number with s, m, h or d (`90m`, `1h`, `2d`); a bare number is seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(text.trim());
  if (!m) throw new ConfigError(`--min-age '${text}' is not a duration like 30m, 1h or 2d`);
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit * 1000;
}

const add = (t: Tally, e: StoredEntry) => {
  t.count++;
  t.bytes += e.size;
};

const hashOf = (baseName: string) => baseName.slice(0, HASH_PART_LENGTH);

/** Runs `fn` over `items` with at most `n` at once. */
async function eachLimited<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

export async function collectCacheGarbage(o: CacheGcOptions): Promise<CacheGcReport> {
  checkPrefix(o.prefix);
  const { storage, prefix } = o;
  const now = (o.now ?? new Date()).getTime();
  const cutoff = now - o.minAgeMs;
  const isYoung = (d: Date) => d.getTime() > cutoff;
  const concurrency = o.concurrency ?? 16;
  const storeDir = o.storeDir ?? STORE_DIR;

  // 1. Everything under the prefix, by kind.
  const entries: { entry: StoredEntry; rel: string; kind: ObjectKind | 'info' | null }[] = [];
  const narInfoByHash = new Map<string, StoredEntry>();
  for await (const entry of storage.list(prefix)) {
    const rel = entry.key.slice(prefix.length);
    const kind = objectKind(rel);
    entries.push({ entry, rel, kind });
    if (kind === 'narinfo') narInfoByHash.set(rel.slice(0, HASH_PART_LENGTH), entry);
  }

  // 2. The live closure, through the narinfos. Young narinfos are roots too: what is kept keeps what it needs.
  const live = new Set<string>();
  const liveNars = new Set<string>();
  const liveDrvs = new Set<string>();
  const rootsMissing: string[] = [];
  for (const r of o.roots) if (r.endsWith('.drv')) liveDrvs.add(r);
  let frontier: string[] = [];
  const reach = (hash: string) => {
    if (live.has(hash) || !narInfoByHash.has(hash)) return false;
    live.add(hash);
    frontier.push(hash);
    return true;
  };
  for (const r of o.roots) if (!reach(hashOf(r)) && !live.has(hashOf(r))) rootsMissing.push(r);
  // A root the cache lacks may still refer to paths it holds (an upload in progress, or a path never uploaded).
  let liveThroughLocalStore = 0;
  if (o.localClosure && rootsMissing.length > 0) {
    for (const p of await o.localClosure(rootsMissing.map((r) => `${storeDir}/${r}`))) {
      if (reach(hashOf(p.slice(p.lastIndexOf('/') + 1)))) liveThroughLocalStore++;
    }
  }
  for (const [hash, e] of narInfoByHash) if (isYoung(e.modified)) reach(hash);
  let read = 0;
  while (frontier.length > 0) {
    const batch = frontier;
    frontier = [];
    await eachLimited(batch, concurrency, async (hash) => {
      const key = narInfoByHash.get(hash)!.key;
      let text: string;
      let got;
      try {
        got = await storage.get(key);
        // Deleted since the listing (another collector): it keeps nothing alive any more.
        if (!got) return;
        text = (await o.decode(got.body, got.contentEncoding)).toString('utf8');
        const info = parseNarInfo(text, key);
        liveNars.add(prefix + info.url);
        if (info.deriver) liveDrvs.add(info.deriver);
        for (const ref of info.references) reach(hashOf(ref));
      } catch (e) {
        throw new CacheGcUnsafeError(storage.location, key, (e as Error).message, { cause: e });
      } finally {
        o.onProgress?.('read', ++read, live.size);
      }
    });
  }

  // 3. Each object: live, young, unknown or dead.
  const report: CacheGcReport = {
    livePaths: live.size,
    rootsMissing,
    liveThroughLocalStore,
    kept: { count: 0, bytes: 0 },
    young: { count: 0, bytes: 0 },
    unknown: [],
    deleted: { count: 0, bytes: 0 },
    deletedByKind: { narinfo: 0, nar: 0, listing: 0, log: 0, realisation: 0 },
    deletedKeys: [],
    failures: [],
    aborted: [],
    uploadsInProgress: 0,
  };
  const dead: Record<ObjectKind, StoredEntry[]> = { narinfo: [], listing: [], realisation: [], log: [], nar: [] };
  const realisationsToRead: { entry: StoredEntry; rel: string }[] = [];
  for (const { entry, rel, kind } of entries) {
    if (kind === null) {
      report.unknown.push(entry.key);
      continue;
    }
    let alive: boolean;
    switch (kind) {
      case 'info':
        alive = true;
        break;
      case 'narinfo':
      case 'listing':
        alive = live.has(rel.slice(0, HASH_PART_LENGTH));
        break;
      case 'nar':
        alive = liveNars.has(entry.key);
        break;
      case 'log':
        alive = liveDrvs.has(LOG_RE.exec(rel)![1]!);
        break;
      case 'realisation':
        if (isYoung(entry.modified)) alive = true;
        else {
          realisationsToRead.push({ entry, rel });
          continue;
        }
        break;
    }
    if (alive) add(report.kept, entry);
    else if (isYoung(entry.modified)) add(report.young, entry);
    else dead[kind as ObjectKind].push(entry);
  }
  // A realisation lives with its output path.
  await eachLimited(realisationsToRead, concurrency, async ({ entry }) => {
    let outPath: string | undefined;
    try {
      const got = await storage.get(entry.key);
      if (!got) return;
      const json = JSON.parse((await o.decode(got.body, got.contentEncoding)).toString('utf8')) as { outPath?: unknown };
      if (typeof json.outPath === 'string') outPath = json.outPath.slice(json.outPath.lastIndexOf('/') + 1);
    } catch {
      // Unreadable: it points at nothing a client could use.
    }
    if (outPath !== undefined && live.has(hashOf(outPath))) add(report.kept, entry);
    else dead.realisation.push(entry);
  });

  // 4. Delete in an order that never leaves a visible narinfo without its NAR or listing.
  const order: ObjectKind[] = ['narinfo', 'listing', 'realisation', 'log', 'nar'];
  const total = order.reduce((n, k) => n + dead[k].length, 0);
  let done = 0;
  for (const kind of order) {
    const list = dead[kind];
    for (const e of list) {
      report.deletedKeys.push(e.key);
      add(report.deleted, e);
    }
    report.deletedByKind[kind] = list.length;
    if (o.dryRun || list.length === 0) continue;
    const keys = list.map((e) => e.key);
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      if (storage.deleteMany) report.failures.push(...(await storage.deleteMany(batch)));
      else {
        for (const k of batch) {
          try {
            await storage.delete(k);
          } catch (err) {
            report.failures.push({ key: k, reason: (err as Error).message });
          }
        }
      }
      done += batch.length;
      o.onProgress?.('delete', done, total);
    }
  }
  if (report.failures.length > 0) {
    const failed = new Set(report.failures.map((f) => f.key));
    const sizes = new Map(entries.map((e) => [e.entry.key, e.entry.size]));
    for (const k of failed) {
      report.deleted.count--;
      report.deleted.bytes -= sizes.get(k) ?? 0;
    }
  }

  // 5. Uploads in parts left unfinished (a killed runner's) for longer than minAge.
  if (storage.listUnfinishedUploads && storage.abortUnfinishedUpload) {
    for await (const u of storage.listUnfinishedUploads(prefix)) {
      if (isYoung(u.initiated)) {
        report.uploadsInProgress++;
        continue;
      }
      report.aborted.push(u);
      if (!o.dryRun) await storage.abortUnfinishedUpload(u);
    }
  }
  return report;
}
