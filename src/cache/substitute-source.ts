/**
 * Where a substituter's paths come from (docs/SUBSTITUTION.md): a binary
 * cache (`file://`, `http(s)://`, `s3://`) read by its files, or a
 * `nix-store --serve` peer over SSH (`ssh://`, serve-source.ts). Each answers
 * a path's metadata as a narinfo and its NAR, uncompressed; the Substituter
 * checks signatures (unless the source is `trusted`) and NAR hashes.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, S3RequestError, SubstituterUnreachableError } from '../errors/index.ts';
import { type NarInfo, parseNarInfo } from '../nix/narinfo.ts';
import type { CompressionMethod } from '../workers/compression.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { withRoom } from '../workers/with-room.ts';
import { BinaryCache } from './binary-cache.ts';
import { narInfoFile } from './layout.ts';
import { openServeSource } from './serve-source.ts';
import { parseStoreUri, splitSubstituterUri, type SubstituterUri } from './store-uri.ts';

export interface SubstituteSource {
  /** As configured, for messages. */
  readonly url: string;
  /**
   * Nix's `trusted` store setting (`?trusted=1`): its paths are accepted
   * without a signature by a trusted key. NAR hashes are checked all the same.
   */
  readonly trusted: boolean;
  /** The path's metadata, or null when the source lacks it. */
  narInfo(storePath: string): Promise<NarInfo | null>;
  /** The path's NAR, uncompressed (not yet checked: the caller does). */
  nar(info: NarInfo): Promise<Buffer>;
  /**
   * For a source opened at its first use (s3://): contacts it now, at start,
   * so that one away is reported (and backed off) at once.
   */
  probe?(): Promise<void>;
  close(): Promise<void>;
}

/** A binary cache's files by their relative name (null: no such file). */
interface CacheFiles {
  get(rel: string): Promise<Buffer | null>;
  probe?(): Promise<void>;
  close(): Promise<void>;
}

function directoryFiles(url: string, dir: string): CacheFiles {
  return {
    get: async (rel) => {
      try {
        return await readFile(join(dir, rel));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
        // A directory gone (unmounted), unreadable, or a disk error: the cache cannot answer.
        throw new SubstituterUnreachableError(url, `cannot read ${rel}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
      }
    },
    close: async () => {},
  };
}

function httpFiles(url: string, base: string): CacheFiles {
  base = base.replace(/\/+$/, '');
  return {
    get: async (rel) => {
      let res: Response;
      try {
        res = await fetch(`${base}/${rel}`);
      } catch (e) {
        // fetch() rejects for DNS, refused or dropped connections and TLS failures; the cause says which.
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        throw new SubstituterUnreachableError(url, `GET ${rel}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, { cause: e });
      }
      // As Nix's HTTP store: 403 is a miss too (an unlistable bucket answers 403 for a missing key).
      if (res.status === 404 || res.status === 403) {
        await res.body?.cancel();
        return null;
      }
      if (!res.ok) {
        await res.body?.cancel();
        throw new SubstituterUnreachableError(url, `GET ${rel}: HTTP ${res.status}`);
      }
      try {
        return Buffer.from(await res.arrayBuffer());
      } catch (e) {
        throw new SubstituterUnreachableError(url, `GET ${rel}: the response broke off (${(e as Error).message})`, { cause: e });
      }
    },
    close: async () => {},
  };
}

/**
 * An s3:// cache's objects. The URI is checked at once (a wrong parameter
 * stops `serve`), but the bucket is opened (nix-cache-info read) at the
 * first use, and again after a failed opening: a bucket away at start makes
 * a substituter skipped for the backoff period, as any other failing
 * substituter, not a runner that cannot start.
 */
function s3Files(url: string, storeUri: string, pool: WorkerPool, awsCredentialsFile: string | undefined): CacheFiles {
  const parsed = parseStoreUri(storeUri);
  let cache: Promise<BinaryCache> | undefined;
  const opened = (): Promise<BinaryCache> =>
    (cache ??= BinaryCache.open(parsed, pool, { awsCredentialsFile }).catch((e: unknown) => {
      cache = undefined;
      throw e;
    }));
  return {
    get: async (rel) => {
      let c: BinaryCache;
      try {
        c = await opened();
      } catch (e) {
        // After start, S3's own failures keep their code; anything else (a nix-cache-info for another store directory) is this cache not answering.
        throw e instanceof S3RequestError ? e : new SubstituterUnreachableError(url, `cannot open the cache: ${(e as Error)?.message ?? String(e)}`, { cause: e });
      }
      return (await c.storage.get(rel))?.body ?? null;
    },
    // At start the error as it is: only S3's own failures (S3_REQUEST) let `serve` start without the cache.
    probe: async () => void (await opened()),
    close: async () => {
      const c = cache;
      cache = undefined;
      await c?.then((x) => x.close(), () => {});
    },
  };
}

function binaryCacheSource(url: string, trusted: boolean, files: CacheFiles, pool: WorkerPool): SubstituteSource {
  return {
    url,
    trusted,
    narInfo: async (storePath) => {
      const body = await files.get(narInfoFile(storePath));
      return body ? parseNarInfo(body.toString('utf8'), `${url}/${narInfoFile(storePath)}`) : null;
    },
    nar: async (info) => {
      const body = await files.get(info.url);
      if (!body) throw new Error(`${url}: ${info.url} (the NAR of ${info.storePath}) is missing`);
      const c = info.compression;
      if (c === 'none' || c === '') return body;
      return withRoom(pool, () => pool.decompress(body, c as CompressionMethod));
    },
    ...(files.probe ? { probe: files.probe } : {}),
    close: () => files.close(),
  };
}

/** Nix's store settings a file:// or http(s):// substituter takes besides `trusted` (accepted, not used: caches are asked in order). */
const READ_ONLY_CACHE_PARAMS = ['priority', 'want-mass-query'];

/** The parameters of a file:// or http(s):// substituter: any other is refused, as for remoteStoreAddr and ssh://. */
function checkCacheParams(u: SubstituterUri): void {
  const bad = [...u.params.keys()].filter((k) => !READ_ONLY_CACHE_PARAMS.includes(k));
  if (bad.length > 0) throw new ConfigError(`substituter '${u.uri}': unknown parameter${bad.length > 1 ? 's' : ''} ${bad.map((k) => `'${k}'`).join(', ')} (known: trusted, ${READ_ONLY_CACHE_PARAMS.join(', ')})`);
}

/**
 * Opens one `substituters` entry. `?trusted=1` means the same for every kind
 * (Nix's `trusted` store setting): its paths are accepted without a
 * signature by a key of trustedPublicKeys.
 */
export async function openSubstituteSource(url: string, pool: WorkerPool, awsCredentialsFile: string | undefined): Promise<SubstituteSource> {
  if (url.startsWith('ssh://')) return openServeSource(url);
  const u = splitSubstituterUri(url);
  const base = u.storeUri.replace(/\?.*$/, '');
  if (url.startsWith('file://')) {
    checkCacheParams(u);
    return binaryCacheSource(url, u.trusted, directoryFiles(url, base.slice('file://'.length)), pool);
  }
  if (/^https?:\/\//.test(url)) {
    checkCacheParams(u);
    return binaryCacheSource(url, u.trusted, httpFiles(url, base), pool);
  }
  // s3:// takes remoteStoreAddr's parameters (checked by parseStoreUri), less `trusted`.
  if (url.startsWith('s3://')) return binaryCacheSource(url, u.trusted, s3Files(url, u.storeUri, pool, awsCredentialsFile), pool);
  throw new ConfigError(`substituter '${url}': only file://, http(s)://, s3:// caches and ssh:// serve peers are supported`);
}
