/** Errors of writing files: the disk, and the binary caches' files. */
import { dirname } from 'node:path';
import { errorKind, HydrantError } from './hydrant-error.ts';

/**
 * Writing a file failed (a full disk, a quota, a read-only or failing
 * filesystem). `path` names the file, `errno` the system's code (ENOSPC, …):
 * Node's own message for a failed write names neither the file nor its use.
 */
export class DiskWriteError extends errorKind('DISK_WRITE') {
  readonly errno: string;

  constructor(
    /** What the file is for: "the build log", "a binary cache file", "a GC root", … */
    readonly what: string,
    readonly path: string,
    cause: unknown,
  ) {
    super(`cannot write ${what} ${path}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.errno = (cause as NodeJS.ErrnoException)?.code ?? 'UNKNOWN';
  }
}

/** System calls that only read: their failure is not a failed write. */
const READS = new Set(['read', 'lstat', 'stat', 'fstat', 'readlink', 'scandir', 'opendir', 'access']);

/**
 * `err` as a DiskWriteError about `path` when it is a system error (an errno
 * code) of writing that file or its temporary sibling; any other error as
 * it is (a failed read of some other file names that file itself).
 */
export function asDiskWriteError(err: unknown, what: string, path: string): unknown {
  if (err instanceof HydrantError) return err;
  const e = err as NodeJS.ErrnoException | null | undefined;
  if (typeof e?.code !== 'string' || !/^E[A-Z0-9]+$/.test(e.code)) return err;
  if ((e.syscall !== undefined && READS.has(e.syscall)) || (e.path !== undefined && dirname(e.path) !== dirname(path))) return err;
  return new DiskWriteError(what, path, err);
}

/**
 * A binary cache entry (narinfo or realisation) would refer to store paths
 * the cache does not hold: a client substituting it would fail halfway, so
 * the entry is not written. Upload the references first.
 */
export class CacheReferenceMissingError extends errorKind('CACHE_REFERENCE_MISSING') {
  constructor(
    readonly entry: string,
    readonly missing: readonly string[],
  ) {
    super(`refusing to publish ${entry}: the cache lacks ${missing.length === 1 ? 'its reference' : `${missing.length} references`} ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
  }
}

/** A binary cache's path was not accepted for substitution (no trusted signature). */
export class SubstituteUntrustedError extends errorKind('SUBSTITUTE_UNTRUSTED') {
  constructor(
    readonly cache: string,
    readonly storePath: string,
  ) {
    super(`${cache}: ${storePath} has no signature by a key of trustedPublicKeys`);
  }
}

/**
 * A substituter could not be asked (connection refused or dropped, an HTTP
 * error other than 404/403, an unreadable cache directory): the Substituter
 * skips it for its backoff period (docs/CACHES.md).
 */
export class SubstituterUnreachableError extends errorKind('SUBSTITUTER_UNREACHABLE') {
  constructor(
    readonly cache: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${cache}: ${detail}`, options);
  }
}

/** What the codes a misconfiguration produces mean, for servers that send no message. */
const S3_HINTS: Record<string, string> = {
  SignatureDoesNotMatch: ': the secret access key does not match the access key id',
  InvalidAccessKeyId: ': the server knows no such access key id',
  NoSuchBucket: ': no such bucket',
  AccessDenied: ': the credentials may not do this',
};

/**
 * A request to an S3 binary cache failed after the SDK's retries (or at
 * once, for a permanent error such as a wrong secret). Names the bucket, the
 * key (empty for bucket-wide requests) and S3's error code
 * (SignatureDoesNotMatch, NoSuchBucket, …; a network error's code otherwise).
 */
export class S3RequestError extends errorKind('S3_REQUEST') {
  constructor(
    readonly operation: string,
    readonly bucket: string,
    readonly key: string,
    readonly s3Code: string,
    readonly httpStatus: number | undefined,
    detail: string,
    cause?: unknown,
  ) {
    const status = httpStatus === undefined ? '' : ` (HTTP ${httpStatus})`;
    // The SDK's message is S3's <Message>, or 'UnknownError' when the server sent none (radosgw).
    const text = detail && detail !== s3Code && detail !== 'UnknownError' ? `: ${detail.split('\n')[0]}` : (S3_HINTS[s3Code] ?? '');
    super(`S3 ${operation} of s3://${bucket}/${key} failed: ${s3Code}${status}${text}`, { cause });
  }
}

/**
 * What a builder uploaded straight to an S3 cache (usePresignedUploads) is
 * not what it declared: a part's ETag is not its presigned MD5, or the stored
 * object's size differs. Nothing is signed for it.
 */
export class PresignedUploadError extends errorKind('PRESIGNED_UPLOAD') {
  constructor(
    readonly key: string,
    detail: string,
  ) {
    super(`the builder's upload of ${key} is refused: ${detail}`);
  }
}
