import { readFile, unlink } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { asDiskWriteError, DiskWriteError } from '../errors/files.ts';
import { CacheReferenceMissingError, ConfigError, NarHashMismatchError } from '../errors/index.ts';
import { Hash } from '../nix/hash.ts';
import { type NarInfo, parseNarInfo, serializeNarInfo } from '../nix/narinfo.ts';
import { formatPublicKey, signPath } from '../nix/signing.ts';
import { parseStorePath, STORE_DIR } from '../nix/store-path.ts';
import type { CompressOptions } from '../workers/compression.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { withRoom } from '../workers/with-room.ts';
import { DirectoryStorage } from './directory-storage.ts';
import { CACHE_DIRS, CACHE_INFO_FILE, CONTENT_TYPES, cacheInfoStoreDir, cacheInfoText, listingFile, logFile, narFile, narInfoFile, realisationFile } from './layout.ts';
import { listingOfPath } from './listing.ts';
import { type LocalPathInfo, queryPathInfos } from './local-path-info.ts';
import { realisationClosure } from './realisations.ts';
import { PrefixedStorage } from './prefixed-storage.ts';
import { formatRealisation, type Realisation, signRealisation } from '../nix/realisation.ts';
import { S3Storage } from './s3-storage.ts';
import type { CacheStorage, PutOptions } from './storage.ts';
import { type CacheCompression, parseStoreUri, type StoreUri } from './store-uri.ts';

export interface BinaryCacheOptions {
  /** Directory caches: fsync each file before giving it its name (default true): a crash never leaves a narinfo over a lost NAR. */
  fsync?: boolean;
  /** S3 caches: a shared credentials file instead of ~/.aws/credentials (config key awsCredentialsFile). */
  awsCredentialsFile?: string | undefined;
  /** Refuse a narinfo whose references the cache lacks (default true). */
  checkReferences?: boolean;
  /** The cache lives under this key prefix (`dir/`): a subdirectory, or keys starting with it in S3. */
  keyPrefix?: string;
}

/** The outcome of publishing one store path. */
export interface PathUpload {
  storePath: string;
  /**
   * true for the one caller whose upload published the path. false: the
   * cache already had it, or a concurrent caller uploaded it (this caller
   * waited for that upload and shares its narInfo).
   */
  uploaded: boolean;
  /** The narinfo written by this upload (or the one this caller waited for). */
  narInfo?: NarInfo;
  /** Bytes of NAR read and of compressed file written (0 when skipped). */
  narSize: number;
  fileSize: number;
  durationMs: number;
}

function prefixed(storage: CacheStorage, prefix: string): CacheStorage {
  return prefix === '' ? storage : new PrefixedStorage(storage, prefix);
}

/**
 * A binary cache laid out and signed as `nix copy --to file://…` / `s3://…`
 * (Nix 2.8) does, so that Nix substitutes from it; written once over a
 * CacheStorage (a directory or an S3 bucket).
 *
 * Publication order makes every visible state consistent: the NAR first
 * (named by its own hash, never overwritten), then the listing, and the
 * narinfo last; a path counts as cached exactly when its narinfo exists. A
 * path is never uploaded twice: an existing narinfo means done, and
 * concurrent uploads of one path in this process share one upload. NARs
 * stream from the store through the worker pool to a local file (serialise,
 * hash, compress in one pass), never whole in memory, and go from there to
 * the storage (renamed into a directory, or uploaded in parts).
 */
export class BinaryCache {
  private readonly inflight = new Map<string, Promise<unknown>>();
  private readonly checkReferences: boolean;

  private constructor(
    readonly store: StoreUri,
    readonly storage: CacheStorage,
    /** The CPU-work pool this cache compresses and hashes on. */
    readonly pool: WorkerPool,
    options: BinaryCacheOptions,
  ) {
    this.checkReferences = options.checkReferences ?? true;
  }

  /**
   * Opens (creating if needed) the cache at a `file://` or `s3://` store URI.
   * Reads (or writes) nix-cache-info at once, so an unreachable bucket or a
   * wrong S3 secret fails here rather than at the first upload.
   */
  static async open(store: StoreUri | string, pool: WorkerPool, options: BinaryCacheOptions = {}): Promise<BinaryCache> {
    const s = typeof store === 'string' ? parseStoreUri(store) : store;
    const prefix = options.keyPrefix ?? '';
    const storage =
      s.scheme === 'file'
        ? await DirectoryStorage.open(join(s.path, prefix), { fsync: options.fsync ?? true, dirs: CACHE_DIRS })
        : prefixed(await S3Storage.open(s, { credentialsFile: options.awsCredentialsFile }), prefix);
    const cache = new BinaryCache(s, storage, pool, options);
    try {
      await cache.init();
    } catch (e) {
      await storage.close();
      throw e;
    }
    return cache;
  }

  /** Where the cache is, for logs: its directory or `s3://bucket`. */
  get location(): string {
    return this.storage.location;
  }

  /** `name:base64` of the signing key's public half (what clients put in trusted-public-keys), if the cache signs. */
  get publicKey(): string | undefined {
    return this.store.secretKey ? formatPublicKey(this.store.secretKey.publicKey) : undefined;
  }

  /** Releases the storage's local resources. */
  close(): Promise<void> {
    return this.storage.close();
  }

  /** The Content-Encoding (and compression) of narinfos, listings and logs: Nix's `*-compression` parameters. */
  private encodingOf(method: CacheCompression): string | undefined {
    return method === 'none' ? undefined : method;
  }

  private async init(): Promise<void> {
    // Like Nix, an existing nix-cache-info is kept; but one for another store directory is a misconfiguration.
    let info = await this.storage.get(CACHE_INFO_FILE);
    if (!info) {
      await this.storage.put(CACHE_INFO_FILE, cacheInfoText({ wantMassQuery: this.store.wantMassQuery, priority: this.store.priority }), { contentType: CONTENT_TYPES.cacheInfo });
      info = await this.storage.get(CACHE_INFO_FILE);
    }
    const storeDir = info ? cacheInfoStoreDir(info.body.toString('utf8')) : null;
    if (storeDir !== null && storeDir !== STORE_DIR) {
      throw new ConfigError(`remote store '${this.store.uri}': the cache is for store ${storeDir}, not ${STORE_DIR}`);
    }
  }

  /**
   * Runs `fn` once per key at a time: callers arriving while it runs share
   * its outcome. `leader` tells the caller whether it started the work, so
   * that an upload is reported (and counted) by one caller only.
   */
  private singleFlight<T>(key: string, fn: () => Promise<T>): { promise: Promise<T>; leader: boolean } {
    const running = this.inflight.get(key);
    if (running) return { promise: running as Promise<T>, leader: false };
    const promise = fn().finally(() => this.inflight.delete(key));
    this.inflight.set(key, promise);
    return { promise, leader: true };
  }

  /** singleFlight for a path: callers that joined see the path as already uploaded by someone else. */
  private pathFlight(storePath: string, fn: () => Promise<PathUpload>): Promise<PathUpload> {
    const { promise, leader } = this.singleFlight(narInfoFile(storePath), fn);
    return leader ? promise : promise.then((r) => ({ ...r, uploaded: false }));
  }

  /** singleFlight for one file: true only for the caller that wrote it. */
  private fileFlight(rel: string, fn: () => Promise<boolean>): Promise<boolean> {
    const { promise, leader } = this.singleFlight(rel, fn);
    return leader ? promise : promise.then(() => false);
  }

  /**
   * Paths known to be in the cache, most recently seen last. Narinfos are
   * write-once, so a path once seen stays (as in Nix's own path-info cache of
   * a binary cache, of the same size): a step's closure upload then checks
   * the disk only for paths this runner has not seen.
   */
  private readonly known = new Set<string>();
  private static readonly KNOWN_MAX = 65536;

  private remember(storePath: string): void {
    this.known.delete(storePath);
    this.known.add(storePath);
    if (this.known.size > BinaryCache.KNOWN_MAX) this.known.delete(this.known.values().next().value!);
  }

  /** Whether the cache holds the path (its narinfo exists). */
  async has(storePath: string): Promise<boolean> {
    if (this.known.has(storePath)) return true;
    const present = await this.storage.has(narInfoFile(storePath));
    if (present) this.remember(storePath);
    return present;
  }

  /** The path's narinfo, or null when the cache lacks it. */
  async readNarInfo(storePath: string): Promise<NarInfo | null> {
    const rel = narInfoFile(storePath);
    const got = await this.storage.get(rel);
    return got ? parseNarInfo((await this.decode(got.body, got.contentEncoding)).toString('utf8'), rel) : null;
  }

  /** Publishes a path of the local store, with the metadata the store records for it. */
  uploadPath(storePath: string): Promise<PathUpload> {
    return this.pathFlight(storePath, async () => {
      if (await this.has(storePath)) return skipped(storePath);
      const [info] = await queryPathInfos([storePath]);
      return this.publishNew(info!);
    });
  }

  /**
   * Publishes a path given what the store records for it (uploadClosure has
   * it already). The NAR read from disk must hash to `info.narHash`, or
   * nothing is published (NarHashMismatchError). `probed`: the caller has
   * just found the cache lacking it, so only what this process published
   * since is checked, not the disk again (should another runner publish it
   * meanwhile, its narinfo still stands).
   */
  publish(info: LocalPathInfo, { probed = false }: { probed?: boolean } = {}): Promise<PathUpload> {
    return this.pathFlight(info.path, async () => {
      const present = probed ? this.known.has(info.path) : await this.has(info.path);
      return present ? skipped(info.path) : this.publishNew(info);
    });
  }

  private async publishNew(info: LocalPathInfo): Promise<PathUpload> {
    const started = performance.now();
    const { path } = info;
    const hashPart = parseStorePath(path).hashPart;
    if (this.checkReferences) {
      const others = info.references.filter((r) => r !== path);
      const present = await Promise.all(others.map((r) => this.has(r)));
      const missing = others.filter((_, i) => !present[i]);
      if (missing.length > 0) throw new CacheReferenceMissingError(path, missing);
    }

    // 1. The NAR, under a temporary name until its file hash (its real name) is known and its NAR hash checked.
    const { compression } = this.store;
    const narKey = `nar/${hashPart}.nar`;
    let tmp = await this.storage.tempFile(narKey);
    const fsync = this.storage.syncTempFiles;
    const writeNar = (file: string) =>
      withRoom(this.pool, () => this.pool.writeNar(path, file, compression, { ...this.compressOptions(), narSize: info.narSize, fsync })).catch((e: unknown) => {
        // The worker reports a failed write without the file's name (a NAR that cannot be read is a NarDumpError).
        throw asDiskWriteError(e, 'a binary cache file', file);
      });
    let w;
    try {
      w = await writeNar(tmp);
    } catch (e) {
      // The storage makes a directory once; one removed since is made again.
      if (!(e instanceof DiskWriteError && e.errno === 'ENOENT')) throw e;
      tmp = await this.storage.tempFile(narKey, { remakeDir: true });
      w = await writeNar(tmp);
    }
    const narHash = Hash.fromBytes('sha256', w.narHash);
    if (!narHash.equals(info.narHash) || w.narSize !== info.narSize) {
      await unlink(tmp).catch(() => {});
      throw new NarHashMismatchError(
        path,
        { narHash: info.narHash.format('base32'), narSize: info.narSize },
        { narHash: narHash.format('base32'), narSize: w.narSize },
      );
    }
    const fileHash = Hash.fromBytes('sha256', w.fileHash);
    const url = narFile(fileHash, compression);
    // An existing file of that name has the same bytes (it is named by their hash).
    await this.storage.put(url, { file: tmp }, { contentType: CONTENT_TYPES.nar, sameBytes: true });

    return this.finishPublish(info, url, fileHash, w.fileSize, started);
  }

  /**
   * Publishes a path whose NAR object someone else stored at `url`
   * (builder-direct uploads, s3-presign.ts): the caller has checked the
   * object against `fileHash`/`fileSize`, and `info` is what the runner's
   * own store verified. Listing, then the signed narinfo.
   */
  publishStoredNar(info: LocalPathInfo, url: string, fileHash: Hash, fileSize: number): Promise<PathUpload> {
    return this.pathFlight(info.path, async () => {
      if (await this.has(info.path)) return skipped(info.path);
      return this.finishPublish(info, url, fileHash, fileSize, performance.now());
    });
  }

  private async finishPublish(info: LocalPathInfo, url: string, fileHash: Hash, fileSize: number, started: number): Promise<PathUpload> {
    const { path } = info;
    const { compression } = this.store;
    // 2. The listing, before the narinfo that makes the path visible.
    if (this.store.writeNarListing) await this.writeListing(path);

    // 3. The narinfo, last.
    const narInfo: NarInfo = {
      storePath: path,
      url,
      compression,
      fileHash,
      fileSize,
      narHash: info.narHash,
      narSize: info.narSize,
      references: info.references.map((r) => parseStorePath(r).baseName),
      sigs: [...info.signatures],
    };
    if (info.deriver) narInfo.deriver = parseStorePath(info.deriver).baseName;
    if (info.ca) narInfo.ca = info.ca;
    const key = this.store.secretKey;
    if (key) narInfo.sigs.push(signPath(key, { storePath: path, narHash: info.narHash, narSize: info.narSize, references: info.references }));
    const wrote = await this.putSmall(narInfoFile(path), Buffer.from(serializeNarInfo(narInfo)), { contentType: CONTENT_TYPES.narInfo }, this.narInfoCompression);
    this.remember(path);
    // !wrote: another runner published the path meanwhile; its narinfo stands.
    if (!wrote) return skipped(path, started);
    return { storePath: path, uploaded: true, narInfo, narSize: info.narSize, fileSize, durationMs: performance.now() - started };
  }

  private compressOptions(): CompressOptions {
    const o: CompressOptions = {};
    if (this.store.compressionLevel !== undefined) o.level = this.store.compressionLevel;
    if (this.store.parallelCompression && this.store.compression === 'xz') o.threads = availableParallelism();
    return o;
  }

  /** `<hash>.ls`, from the path's metadata (listing.ts); only the listing is held in memory. */
  private async writeListing(path: string): Promise<void> {
    const rel = listingFile(path);
    // Only called for a path the cache lacks: its listing is new too (writeOnce keeps an existing one).
    const json = await listingOfPath(path);
    await this.putSmall(rel, json, { contentType: CONTENT_TYPES.listing }, this.store.lsCompression);
  }

  /** narinfo-compression exists for S3 caches only (as in Nix). */
  private get narInfoCompression(): CacheCompression {
    return this.store.scheme === 's3' ? this.store.narinfoCompression : 'none';
  }

  /**
   * Writes a narinfo, listing or log compressed by `method`, announcing it as
   * the Content-Encoding (S3 serves it so; Nix undoes it when reading).
   */
  private async putSmall(key: string, data: Buffer, options: PutOptions, method: CacheCompression): Promise<boolean> {
    const body = method === 'none' ? data : await withRoom(this.pool, () => this.pool.compress(data, method));
    return this.storage.put(key, body, { ...options, contentEncoding: this.encodingOf(method) });
  }

  /** Undoes a Content-Encoding the cache's own methods produce. */
  private async decode(body: Buffer, encoding: string | undefined): Promise<Buffer> {
    if (encoding === undefined || encoding === 'identity') return body;
    if (encoding !== 'xz' && encoding !== 'bzip2' && encoding !== 'br' && encoding !== 'zstd') throw new ConfigError(`remote store '${this.store.uri}': an object has Content-Encoding '${encoding}', which Hydrant cannot read`);
    return withRoom(this.pool, () => this.pool.decompress(body, encoding));
  }

  /**
   * Publishes a build log as `log/<drv basename>`, compressed per
   * `log-compression`, from a local file: plain text, or bzip2 when its name
   * ends in `.bz2` (Nix's own log files). Logs are capped by maxLogSize, so
   * one is held in memory. Returns false when the cache already had it.
   */
  async uploadLog(drvPath: string, localLogFile: string): Promise<boolean> {
    if (await this.storage.has(logFile(drvPath))) return false;
    let data: Buffer = await readFile(localLogFile);
    if (localLogFile.endsWith('.bz2')) {
      const compressed = data;
      data = await withRoom(this.pool, () => this.pool.decompress(compressed, 'bzip2'));
    }
    return this.uploadLogText(drvPath, data);
  }

  /**
   * A build log the cache holds (`log/<drv basename>`), decompressed; null
   * when it has none. A directory keeps no Content-Encoding: a body that
   * starts with bzip2's, xz's or zstd's magic is taken as compressed.
   */
  async readLog(drvPath: string): Promise<Buffer | null> {
    const got = await this.storage.get(logFile(drvPath));
    if (!got) return null;
    return this.decode(got.body, got.contentEncoding ?? sniffEncoding(got.body));
  }

  /** uploadLog for a log already in memory (plain text). */
  uploadLogText(drvPath: string, text: Buffer): Promise<boolean> {
    const rel = logFile(drvPath);
    // Storage writes are write-once: a log the cache has (from an earlier attempt) is kept.
    // Compressing transfers the buffer to a worker, detaching it: the caller's
    // text (which Hydra's .bz2 copy and the other caches are made from) is copied.
    return this.fileFlight(rel, () => this.putSmall(rel, this.store.logCompression === 'none' ? text : Buffer.from(text), { contentType: CONTENT_TYPES.log }, this.store.logCompression));
  }

  /**
   * Publishes the local store's realisations of a derivation's outputs and
   * of the outputs they depend on (`realisations/<id>.doi`, as `nix copy`
   * does for CA derivations): publishRealisations of what `nix realisation
   * info` returns. Returns the ids written.
   */
  async uploadRealisations(drvPath: string): Promise<string[]> {
    return this.publishRealisations(await realisationClosure(drvPath), `the realisations of ${drvPath}`);
  }

  /**
   * Publishes realisations (`realisations/<id>.doi`, Nix 2.8's body, see
   * src/nix/realisation.ts), dependencies first as given, each signed with
   * the cache's key when it has one, and only once the cache holds every
   * output path they name (throws CacheReferenceMissingError otherwise,
   * writing nothing). A realisation the cache has is kept. Returns the ids
   * written.
   */
  async publishRealisations(rs: readonly Realisation[], what = 'the realisations'): Promise<string[]> {
    const outputs = [...new Set(rs.flatMap((r) => [r.outPath, ...Object.values(r.dependentRealisations)]).map((b) => `${STORE_DIR}/${b}`))];
    const present = await Promise.all(outputs.map((p) => this.has(p)));
    const missing = outputs.filter((_, i) => !present[i]);
    if (missing.length > 0) throw new CacheReferenceMissingError(what, missing);
    const key = this.store.secretKey;
    const written: string[] = [];
    for (const r of rs) {
      const rel = realisationFile(r.id);
      const body = formatRealisation(key ? signRealisation(key, r) : r);
      const wrote = await this.fileFlight(rel, async () =>
        (await this.storage.has(rel)) ? false : this.storage.put(rel, body, { contentType: CONTENT_TYPES.realisation }),
      );
      if (wrote) written.push(r.id);
    }
    return written;
  }
}

function skipped(storePath: string, started = performance.now()): PathUpload {
  return { storePath, uploaded: false, narSize: 0, fileSize: 0, durationMs: performance.now() - started };
}

/** The compression a stored body's first bytes show (xz, bzip2, zstd), else none. */
function sniffEncoding(body: Buffer): string | undefined {
  if (body.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (body.subarray(0, 3).toString('latin1') === 'BZh' && body.length >= 10 && body.subarray(4, 10).equals(Buffer.from([0x31, 0x41, 0x59, 0x26, 0x53, 0x59]))) return 'bzip2';
  if (body.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zstd';
  return undefined;
}
