import type { Hash } from '../nix/hash.ts';
import { parseStorePath, STORE_DIR } from '../nix/store-path.ts';
import { narFileExtension } from '../workers/compression.ts';
import type { CacheCompression } from './store-uri.ts';

/**
 * File names inside a binary cache, as `nix copy --to file://…` (Nix 2.8)
 * lays them out, relative to the cache root.
 */

export const CACHE_INFO_FILE = 'nix-cache-info';
/** Directories Nix creates when it opens a file:// cache. */
export const CACHE_DIRS = ['nar', 'log', 'realisations'] as const;

/** `<hashpart>.narinfo`: a path is in the cache exactly when this file exists. */
export function narInfoFile(storePath: string): string {
  return `${parseStorePath(storePath).hashPart}.narinfo`;
}

/** `<hashpart>.ls`: the file listing of the path's NAR. */
export function listingFile(storePath: string): string {
  return `${parseStorePath(storePath).hashPart}.ls`;
}

/** `nar/<base32 sha256 of the file>.nar<.xz|.bz2|.br|.zst|>`: named by content, so never rewritten. */
export function narFile(fileHash: Hash, compression: CacheCompression): string {
  return `nar/${fileHash.toBase32()}.nar${narFileExtension(compression)}`;
}

/** `log/<drv basename>`, whatever the log's compression (as `nix store copy-log` writes). */
export function logFile(drvPath: string): string {
  return `log/${parseStorePath(drvPath).baseName}`;
}

/** `realisations/<sha256:drvhash>!<output>.doi`. */
export function realisationFile(id: string): string {
  if (!/^sha256:[0-9a-f]{64}![A-Za-z0-9+\-._?=]+$/.test(id)) throw new RangeError(`bad realisation id '${id}'`);
  return `realisations/${id}.doi`;
}

export interface CacheInfo {
  storeDir?: string;
  wantMassQuery?: boolean | undefined;
  priority?: number | undefined;
}

/** Nix 2.8 writes only `StoreDir`; the others are written when configured (want-mass-query=, priority=). */
export function cacheInfoText(info: CacheInfo = {}): string {
  const lines = [`StoreDir: ${info.storeDir ?? STORE_DIR}`];
  if (info.wantMassQuery !== undefined) lines.push(`WantMassQuery: ${info.wantMassQuery ? 1 : 0}`);
  if (info.priority !== undefined) lines.push(`Priority: ${info.priority}`);
  return `${lines.join('\n')}\n`;
}

/** The `StoreDir` of a nix-cache-info, or null when it has none. */
export function cacheInfoStoreDir(text: string): string | null {
  const m = /^StoreDir: (.*)$/m.exec(text);
  return m ? m[1]! : null;
}

/** Content-Type of each kind of object, as Nix's binary cache store sets them (binary-cache-store.cc). */
export const CONTENT_TYPES = {
  cacheInfo: 'text/x-nix-cache-info',
  narInfo: 'text/x-nix-narinfo',
  nar: 'application/x-nix-nar',
  listing: 'application/json',
  log: 'text/plain; charset=utf-8',
  realisation: 'application/json',
} as const;
