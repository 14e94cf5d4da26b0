/**
 * Builder-direct uploads to an S3 cache (`usePresignedUploads`): the runner
 * presigns the PUTs of one NAR object and the builder sends the bytes
 * straight to S3. What S3 stores is bound to what the builder declared: each
 * URL signs `Content-MD5` and `Content-Length`, so S3 itself refuses a body
 * other than the declared one (BadDigest) before storing anything; a
 * multipart upload is completed by the runner only when every part's ETag is
 * the MD5 it presigned, and the object is then HEADed for the declared size.
 * The NAR hash is not taken from the builder: the runner has imported and
 * verified the NAR (UploadOutput) before it writes a narinfo for it
 * (docs/CACHES.md "Builder-direct uploads").
 */
import { createHash, createHmac, type Hash as NodeHash, type Hmac } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
} from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { PresignedUploadError } from '../errors/index.ts';
import type { S3Storage } from './s3-storage.ts';

/** S3's smallest part (all but the last) and its part count limit. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;

/** One request the builder makes: PUT `url` with exactly these headers and the declared bytes. */
export interface PresignedRequest {
  url: string;
  headers: Record<string, string>;
}

/** A part as the builder declares it before uploading. */
export interface DeclaredPart {
  /** 1-based. */
  partNumber: number;
  size: number;
  /** MD5 of the part's bytes (16 bytes). */
  md5: Uint8Array;
}

/** SHA-256 and HMAC-SHA-256 as the signer wants them, from node:crypto. */
type Data = string | ArrayBuffer | ArrayBufferView;
const bytes = (d: Data): Uint8Array | string =>
  typeof d === 'string' ? d : d instanceof ArrayBuffer ? new Uint8Array(d) : new Uint8Array(d.buffer, d.byteOffset, d.byteLength);

class NodeSha256 {
  private h: NodeHash | Hmac;
  private readonly secret: Uint8Array | string | undefined;
  constructor(secret?: Data) {
    this.secret = secret === undefined ? undefined : bytes(secret);
    this.h = this.fresh();
  }
  private fresh(): NodeHash | Hmac {
    return this.secret === undefined ? createHash('sha256') : createHmac('sha256', this.secret);
  }
  update(data: Data): void {
    this.h.update(bytes(data));
  }
  async digest(): Promise<Uint8Array> {
    return this.h.digest();
  }
  reset(): void {
    this.h = this.fresh();
  }
}

/** The parts a NAR object of `size` bytes is cut into at `partSize` (one part: a single PUT). */
export function partSizes(size: number, partSize: number): number[] {
  const p = Math.max(MIN_PART_SIZE, partSize, Math.ceil(size / MAX_PARTS));
  if (size <= p) return [size];
  const out: number[] = [];
  for (let off = 0; off < size; off += p) out.push(Math.min(p, size - off));
  return out;
}

export class S3Presigner {
  private readonly signer: SignatureV4;
  private readonly base: URL;

  constructor(
    private readonly storage: S3Storage,
    /** How long a URL stays valid (Nix's and the Rust runner's presigned-url-expiry; default one hour). */
    private readonly expiresInS = 3600,
  ) {
    const { client, bucket } = storage;
    this.signer = new SignatureV4({
      credentials: client.config.credentials,
      region: client.config.region,
      service: 's3',
      sha256: NodeSha256,
      // S3 signs the path as sent, without the second escaping other services use.
      uriEscapePath: false,
      applyChecksum: false,
    });
    this.base = new URL(storage.endpoint ?? `https://s3.${storage.region}.amazonaws.com`);
    void bucket;
  }

  private async presign(key: string, query: Record<string, string>, headers: Record<string, string>, method: 'PUT' | 'GET' = 'PUT'): Promise<PresignedRequest> {
    const port = this.base.port ? Number(this.base.port) : undefined;
    const host = this.base.host;
    const path = `${this.base.pathname.replace(/\/$/, '')}/${this.storage.bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
    const signed = await this.signer.presign(
      {
        method,
        protocol: this.base.protocol,
        hostname: this.base.hostname,
        ...(port ? { port } : {}),
        path,
        query,
        // The payload is not hashed into the signature (UNSIGNED-PAYLOAD); Content-MD5 binds it instead.
        headers: { host, ...headers, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
      },
      {
        expiresIn: this.expiresInS,
        unsignableHeaders: new Set(['x-amz-content-sha256']),
        unhoistableHeaders: new Set(['x-amz-content-sha256']),
      },
    );
    const url = new URL(`${this.base.protocol}//${host}${path}`);
    for (const [k, v] of Object.entries(signed.query ?? {})) {
      if (typeof v === 'string') url.searchParams.set(k, v);
    }
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(signed.headers)) {
      const l = k.toLowerCase();
      if (l !== 'host' && l !== 'x-amz-content-sha256') out[l] = v;
    }
    // URLSearchParams writes spaces as '+', which SigV4 reads as a literal plus.
    return { url: url.toString().replace(/\+/g, '%20'), headers: out };
  }

  /** A single PUT of exactly `size` bytes whose MD5 is `md5`; `If-None-Match: *` keeps an existing object. */
  presignPut(key: string, size: number, md5: Uint8Array, contentType: string): Promise<PresignedRequest> {
    return this.presign(key, {}, {
      'content-length': String(size),
      'content-md5': Buffer.from(md5).toString('base64'),
      'content-type': contentType,
      'if-none-match': '*',
    });
  }

  /**
   * A GET of `key`: the runner's read-back of what a builder uploaded runs on
   * a worker thread, which has no S3 client; a URL is all it needs.
   */
  presignGet(key: string): Promise<PresignedRequest> {
    return this.presign(key, {}, {}, 'GET');
  }

  /** Begins a multipart upload (the runner's credentials, not a URL: the builder never learns them). */
  async createMultipart(key: string, contentType: string): Promise<string> {
    try {
      const r = await this.storage.client.send(new CreateMultipartUploadCommand({ Bucket: this.storage.bucket, Key: key, ContentType: contentType }));
      return r.UploadId!;
    } catch (e) {
      throw this.storage.requestError('CreateMultipartUpload', key, e);
    }
  }

  presignPart(key: string, uploadId: string, part: DeclaredPart): Promise<PresignedRequest> {
    return this.presign(key, { partNumber: String(part.partNumber), uploadId }, {
      'content-length': String(part.size),
      'content-md5': Buffer.from(part.md5).toString('base64'),
    });
  }

  /**
   * Completes a multipart upload from the parts the runner presigned: each
   * ETag the builder reports must be the MD5 presigned for that part (S3 has
   * checked the part's bytes against it). Returns false when an object of
   * that key exists already (it is named by its hash: same bytes).
   */
  async completeMultipart(key: string, uploadId: string, declared: readonly DeclaredPart[], etags: readonly string[]): Promise<boolean> {
    if (etags.length !== declared.length) {
      throw new PresignedUploadError(key, `${etags.length} parts reported, ${declared.length} presigned`);
    }
    declared.forEach((p, i) => {
      const etag = etags[i]!.replace(/"/g, '').toLowerCase();
      const want = Buffer.from(p.md5).toString('hex');
      if (etag !== want) throw new PresignedUploadError(key, `part ${p.partNumber} has ETag ${etag}, not the declared MD5 ${want}`);
    });
    try {
      await this.storage.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.storage.bucket,
          Key: key,
          UploadId: uploadId,
          MultipartUpload: { Parts: declared.map((p, i) => ({ PartNumber: p.partNumber, ETag: etags[i] })) },
          IfNoneMatch: '*',
        }),
      );
      return true;
    } catch (e) {
      if (httpStatus(e) === 412) {
        await this.abort(key, uploadId);
        return false;
      }
      throw this.storage.requestError('CompleteMultipartUpload', key, e);
    }
  }

  /** Discards an upload that will not be completed (a refused declaration, a failed builder). */
  async abort(key: string, uploadId: string): Promise<void> {
    await this.storage.client.send(new AbortMultipartUploadCommand({ Bucket: this.storage.bucket, Key: key, UploadId: uploadId })).catch(() => {});
  }

  /** The stored object's size, or null when there is none. */
  async storedSize(key: string): Promise<number | null> {
    try {
      const r = await this.storage.client.send(new HeadObjectCommand({ Bucket: this.storage.bucket, Key: key }));
      return r.ContentLength ?? 0;
    } catch (e) {
      if (httpStatus(e) === 404) return null;
      throw this.storage.requestError('HeadObject', key, e);
    }
  }
}

function httpStatus(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}
