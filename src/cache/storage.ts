/**
 * Where a binary cache's objects live. The cache format (src/cache/binary-cache.ts)
 * is written once over this interface; a backend only stores named byte
 * strings. Every object of a binary cache is written once (narinfos make a
 * path visible, NARs are named by their hash), so `put` never replaces an
 * existing object: it reports whether it wrote.
 */

/** HTTP metadata an object carries (a directory cannot record it; S3 serves it back to clients). */
export interface PutOptions {
  contentType: string;
  /** The compression of the stored bytes when clients must undo it (Nix's narinfo-/ls-/log-compression). */
  contentEncoding?: string | undefined;
  /**
   * The key is derived from the bytes (a NAR named by its file hash): an
   * existing object of that key holds the same bytes, so a backend may
   * replace it rather than check for it (put then reports that it wrote).
   */
  sameBytes?: boolean;
}

export interface TempFileOptions {
  /** Make the file's directory even if this storage made it before (a write there found it gone). */
  remakeDir?: boolean;
}

/**
 * A body: bytes, or a finished local file made at `storage.tempFile(...)`.
 * `put` takes ownership of such a file and removes it, whatever the outcome.
 */
export type PutBody = Uint8Array | string | { file: string };

export interface StoredObject {
  body: Buffer;
  /** The Content-Encoding the object was stored with, if any. */
  contentEncoding: string | undefined;
}

export interface StoredEntry {
  key: string;
  size: number;
  modified: Date;
}

/** An upload begun in parts and neither completed nor aborted (S3 multipart). */
export interface UnfinishedUpload {
  key: string;
  uploadId: string;
  initiated: Date;
}

/** A key `deleteMany` could not delete, with the server's reason. */
export interface DeleteFailure {
  key: string;
  reason: string;
}

export interface CacheStorage {
  /** Where the objects are, for logs and errors: a directory or `s3://bucket`. */
  readonly location: string;
  has(key: string): Promise<boolean>;
  /** The object, or null when there is none. */
  get(key: string): Promise<StoredObject | null>;
  /** Stores the object unless one of that key exists; returns whether it wrote. Large files go up in parts. */
  put(key: string, body: PutBody, options: PutOptions): Promise<boolean>;
  /**
   * Whether a file prepared at `tempFile` must be flushed to disk before `put`:
   * true where it becomes the object itself (a directory that fsyncs).
   */
  readonly syncTempFiles: boolean;
  /** A fresh local file name where a body for `key` may be prepared before `put(key, { file })`. */
  tempFile(key: string, options?: TempFileOptions): Promise<string>;
  /** Objects whose key starts with `prefix`. */
  list(prefix: string): AsyncIterable<StoredEntry>;
  /** Removes the object; a missing one is not an error. */
  delete(key: string): Promise<void>;
  /**
   * Removes many objects, in as few requests as the backend allows (S3's
   * DeleteObjects takes up to 1000 keys); missing ones are not errors. Returns
   * the keys it could not delete. Optional: without it, `delete` each key.
   */
  deleteMany?(keys: readonly string[]): Promise<DeleteFailure[]>;
  /**
   * Uploads in parts begun under `prefix` and never completed or aborted
   * (their parts are stored, and billed, but are no object). Optional: a
   * backend without multipart uploads has none.
   */
  listUnfinishedUploads?(prefix: string): AsyncIterable<UnfinishedUpload>;
  /** Discards an unfinished upload and its stored parts. */
  abortUnfinishedUpload?(upload: UnfinishedUpload): Promise<void>;
  /** Releases local resources (temporary directories, connections). */
  close(): Promise<void>;
}
