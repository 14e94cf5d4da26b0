import { type FileHandle, mkdtemp, open, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { S3RequestError } from '../errors/index.ts';
import type { CacheStorage, DeleteFailure, PutBody, PutOptions, StoredEntry, StoredObject, UnfinishedUpload } from './storage.ts';
import type { S3StoreUri } from './store-uri.ts';

/** Nix's default part size (`buffer-size`): S3's smallest allowed part. */
export const DEFAULT_PART_SIZE = 5 * 1024 * 1024;
/** S3's limit on the parts of one upload. */
const MAX_PARTS = 10_000;
/** Parts of one upload in flight at once (each held in memory). */
const PARTS_IN_FLIGHT = 4;
/** S3's limit on the keys of one DeleteObjects request. */
const DELETE_BATCH = 1000;
/** Attempts per request, with the SDK's exponential backoff and jitter between them (Nix: the SDK's default of 3). */
const MAX_ATTEMPTS = 5;

export interface S3StorageOptions {
  /** A shared credentials file to read instead of ~/.aws/credentials (config key awsCredentialsFile). */
  credentialsFile?: string | undefined;
  /** Where NARs are compressed before they go up (default: the system's temporary directory). */
  stagingDir?: string | undefined;
}

/** The S3 client's endpoint for a store URI: `endpoint=` as given, or host[:port] with `scheme=` (Nix's way). */
function endpointUrl(s: S3StoreUri): string | undefined {
  if (s.endpoint === undefined) return undefined;
  return s.endpoint.includes('://') ? s.endpoint : `${s.endpointScheme ?? 'https'}://${s.endpoint}`;
}

/**
 * Objects in an S3 bucket (`s3://` caches), through `@aws-sdk/client-s3`.
 * Credentials are found as the SDK finds them (environment, then the shared
 * credentials file with `profile=`, then instance metadata). A custom
 * endpoint means path-style URLs (`http://host:port/bucket/key`), as in Nix.
 * Transient failures (throttling, 5xx, timeouts, dropped connections) are
 * retried by the SDK with backoff; what remains becomes an S3RequestError
 * naming bucket, key and S3's error code. Bodies larger than the part size
 * go up as a multipart upload, aborted when any part fails.
 */
export class S3Storage implements CacheStorage {
  /** Also used by the presigner (s3-presign.ts), which signs with the same credentials. */
  readonly client: S3Client;
  readonly bucket: string;
  readonly partSize: number;
  /** The custom endpoint (`http://host:port`), or undefined for AWS. */
  readonly endpoint: string | undefined;
  readonly region: string;

  private constructor(
    store: S3StoreUri,
    private readonly staging: string,
    options: S3StorageOptions,
  ) {
    this.bucket = store.bucket;
    this.partSize = store.bufferSize ?? DEFAULT_PART_SIZE;
    const endpoint = endpointUrl(store);
    this.endpoint = endpoint;
    this.region = store.region ?? 'us-east-1';
    // The SDK warns (over eight lines of stderr) that its releases after January 2027 need Node 22;
    // the version in package-lock.json runs on Node 20, which this project targets.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      region: store.region ?? 'us-east-1',
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
      credentials: defaultProvider({
        ...(store.profile ? { profile: store.profile } : {}),
        ...(options.credentialsFile ? { filepath: options.credentialsFile } : {}),
      }),
      maxAttempts: MAX_ATTEMPTS,
      retryMode: 'standard',
      // Nix's timeouts (connect 5 s, request 600 s).
      requestHandler: { connectionTimeout: 5_000, requestTimeout: 600_000 },
      // S3-compatible servers (radosgw, MinIO, Garage) do not all know the SDK's newer checksum headers.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /** Makes the client; the bucket is first contacted by the cache's first request (BinaryCache reads nix-cache-info at open). */
  static async open(store: S3StoreUri, options: S3StorageOptions = {}): Promise<S3Storage> {
    const staging = await mkdtemp(join(options.stagingDir ?? tmpdir(), 'hydrant-s3-'));
    return new S3Storage(store, staging, options);
  }

  /** Staged files are read back and uploaded, never kept: flushing them would only cost time. */
  readonly syncTempFiles = false;

  get location(): string {
    return `s3://${this.bucket}`;
  }

  /** An S3 failure as an S3RequestError naming bucket, key and S3's error code. */
  requestError(operation: string, key: string, e: unknown): S3RequestError {
    return this.fail(operation, key, e);
  }

  private fail(operation: string, key: string, e: unknown): S3RequestError {
    const err = e as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    // Network errors carry a system code (ECONNREFUSED); S3's own errors their name (SignatureDoesNotMatch).
    const code = typeof err?.code === 'string' && /^E[A-Z]+$/.test(err.code) ? err.code : (err?.name ?? 'Unknown');
    return new S3RequestError(operation, this.bucket, key, code, err?.$metadata?.httpStatusCode, err?.message ?? String(e), e);
  }

  async has(key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return true;
    } catch (e) {
      if (status(e) === 404) return false;
      throw this.fail('HeadObject', key, e);
    }
  }

  async get(key: string): Promise<StoredObject | null> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      const body = Buffer.from(await r.Body!.transformToByteArray());
      return { body, contentEncoding: r.ContentEncoding || undefined };
    } catch (e) {
      if (status(e) === 404 && (e as Error).name === 'NoSuchKey') return null;
      throw this.fail('GetObject', key, e);
    }
  }

  async put(key: string, body: PutBody, options: PutOptions): Promise<boolean> {
    if (typeof body === 'object' && 'file' in body) {
      try {
        return await this.putFile(key, body.file, options);
      } finally {
        await unlink(body.file).catch(() => {});
      }
    }
    return this.putBytes(key, typeof body === 'string' ? Buffer.from(body) : body, options);
  }

  /** One PutObject; `If-None-Match: *` makes the server refuse to replace an existing object. */
  private async putBytes(key: string, body: Uint8Array, options: PutOptions): Promise<boolean> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentLength: body.length,
          ContentType: options.contentType,
          ...(options.contentEncoding ? { ContentEncoding: options.contentEncoding } : {}),
          IfNoneMatch: '*',
        }),
      );
      return true;
    } catch (e) {
      if (status(e) === 412) return false;
      throw this.fail('PutObject', key, e);
    }
  }

  private async putFile(key: string, file: string, options: PutOptions): Promise<boolean> {
    // NARs are named by their hash: one already there has these bytes (and a second upload would waste the bandwidth).
    if (await this.has(key)) return false;
    const size = (await stat(file)).size;
    const fh = await open(file, 'r');
    try {
      if (size <= this.partSize) return await this.putBytes(key, await readExactly(fh, 0, size), options);
      return await this.multipart(key, fh, size, options);
    } finally {
      await fh.close();
    }
  }

  private async multipart(key: string, fh: FileHandle, size: number, options: PutOptions): Promise<boolean> {
    let uploadId: string;
    try {
      const r = await this.client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          ContentType: options.contentType,
          ...(options.contentEncoding ? { ContentEncoding: options.contentEncoding } : {}),
        }),
      );
      uploadId = r.UploadId!;
    } catch (e) {
      throw this.fail('CreateMultipartUpload', key, e);
    }
    try {
      // S3 takes at most 10,000 parts: a NAR beyond 10,000 × buffer-size goes up in larger parts.
      const partSize = Math.max(this.partSize, Math.ceil(size / MAX_PARTS));
      const count = Math.ceil(size / partSize);
      const etags = new Array<string>(count);
      let next = 0;
      let failed = false;
      const worker = async (): Promise<void> => {
        while (!failed && next < count) {
          const i = next++;
          const offset = i * partSize;
          try {
            const buf = await readExactly(fh, offset, Math.min(partSize, size - offset));
            let r;
            try {
              r = await this.client.send(
                new UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: i + 1, Body: buf, ContentLength: buf.length }),
              );
            } catch (e) {
              throw this.fail('UploadPart', key, e);
            }
            etags[i] = r.ETag!;
          } catch (e) {
            failed = true;
            throw e;
          }
        }
      };
      // Every part settles before the upload is completed or aborted (an abort racing a part may leave it stored).
      const settled = await Promise.allSettled(Array.from({ length: Math.min(PARTS_IN_FLIGHT, count) }, worker));
      const failure = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failure) throw failure.reason;
      try {
        await this.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
            IfNoneMatch: '*',
          }),
        );
      } catch (e) {
        if (status(e) === 412) {
          await this.abort(key, uploadId);
          return false;
        }
        throw this.fail('CompleteMultipartUpload', key, e);
      }
      return true;
    } catch (e) {
      // No half-uploaded parts are left to be billed (or collected later).
      await this.abort(key, uploadId);
      throw e;
    }
  }

  private async abort(key: string, uploadId: string): Promise<void> {
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => {});
  }

  async tempFile(key: string): Promise<string> {
    return join(this.staging, `${basename(key)}.${randomBytes(6).toString('hex')}.tmp`);
  }

  async *list(prefix: string): AsyncIterable<StoredEntry> {
    let token: string | undefined;
    do {
      let r;
      try {
        r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }));
      } catch (e) {
        throw this.fail('ListObjectsV2', prefix, e);
      }
      for (const o of r.Contents ?? []) yield { key: o.Key!, size: o.Size ?? 0, modified: o.LastModified ?? new Date(0) };
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (e) {
      if (status(e) !== 404) throw this.fail('DeleteObject', key, e);
    }
  }

  async deleteMany(keys: readonly string[]): Promise<DeleteFailure[]> {
    const failed: DeleteFailure[] = [];
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      let r;
      try {
        // Quiet: the reply names only the keys that failed.
        r = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }),
        );
      } catch (e) {
        throw this.fail('DeleteObjects', batch[0]!, e);
      }
      for (const err of r.Errors ?? []) failed.push({ key: err.Key ?? '', reason: `${err.Code ?? 'Unknown'}: ${err.Message ?? ''}` });
    }
    return failed;
  }

  async *listUnfinishedUploads(prefix: string): AsyncIterable<UnfinishedUpload> {
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      let r;
      try {
        r = await this.client.send(
          new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
        );
      } catch (e) {
        throw this.fail('ListMultipartUploads', prefix, e);
      }
      for (const u of r.Uploads ?? []) {
        if (u.Key && u.UploadId) yield { key: u.Key, uploadId: u.UploadId, initiated: u.Initiated ?? new Date(0) };
      }
      const more = r.IsTruncated === true;
      keyMarker = more ? r.NextKeyMarker : undefined;
      uploadIdMarker = more ? r.NextUploadIdMarker : undefined;
      if (more && keyMarker === undefined) break;
    } while (keyMarker !== undefined);
  }

  async abortUnfinishedUpload(upload: UnfinishedUpload): Promise<void> {
    try {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.key, UploadId: upload.uploadId }));
    } catch (e) {
      // Completed or aborted meanwhile: nothing is left to discard.
      if (status(e) !== 404) throw this.fail('AbortMultipartUpload', upload.key, e);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
    await rm(this.staging, { recursive: true, force: true });
  }
}

/** `len` bytes of the file from `offset`; a file that shrank meanwhile is an error, not a short object. */
async function readExactly(fh: FileHandle, offset: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, offset + got);
    if (bytesRead === 0) throw new Error(`unexpected end of the staged file at byte ${offset + got} of an upload`);
    got += bytesRead;
  }
  return buf;
}

function status(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}
