/**
 * The runner's side of builder-direct uploads (`usePresignedUploads`,
 * docs/CACHES.md "Builder-direct uploads"): for an output the runner has
 * imported and verified, it checks the builder's declaration of the
 * compressed NAR (size, SHA-256, parts with their MD5s), presigns the PUTs
 * into its S3 cache, and on completion checks what S3 stored (ETags are the
 * presigned MD5s, the object has the declared size) before it writes the
 * narinfo, signed, from what its own store verified.
 */
import { Hash } from '../nix/hash.ts';
import { HydrantError, PresignedUploadError } from '../errors/index.ts';
import { withRoom } from '../workers/with-room.ts';
import type { BinaryCache, PathUpload } from './binary-cache.ts';
import { CONTENT_TYPES, narFile } from './layout.ts';
import { type LocalPathInfo, queryPathInfos } from './local-path-info.ts';
import { type DeclaredPart, type PresignedRequest, S3Presigner, partSizes } from './s3-presign.ts';
import { S3Storage } from './s3-storage.ts';
import { uploadClosure } from './upload.ts';

export interface Declaration {
  storePath: string;
  /** SHA-256 of the compressed NAR (32 bytes): the narinfo's FileHash. */
  fileSha256: Uint8Array;
  fileSize: number;
  parts: DeclaredPart[];
}

export interface Grant {
  present: boolean;
  puts: PresignedRequest[];
}

interface Pending {
  key: string;
  uploadId: string | null;
  fileHash: Hash;
  fileSize: number;
  parts: DeclaredPart[];
}

export class PresignedUploads {
  private readonly presigner: S3Presigner;
  private readonly pending = new Map<string, Pending>();

  constructor(
    readonly cache: BinaryCache,
    expiresInS = 3600,
  ) {
    if (!(cache.storage instanceof S3Storage)) throw new TypeError(`builder-direct uploads need an s3:// cache, not ${cache.location}`);
    this.presigner = new S3Presigner(cache.storage, expiresInS);
  }

  /** What builders are told in Joined. */
  get announcement(): { compression: string; partSize: number } {
    return { compression: this.cache.store.compression, partSize: (this.cache.storage as S3Storage).partSize };
  }

  private validate(d: Declaration): void {
    const bad = (why: string): never => {
      throw new PresignedUploadError(d.storePath, why);
    };
    if (d.fileSha256.length !== 32) bad('the file hash is not 32 bytes');
    if (!Number.isSafeInteger(d.fileSize) || d.fileSize <= 0) bad('the file size is not a positive integer');
    const sizes = partSizes(d.fileSize, this.announcement.partSize);
    if (d.parts.length !== sizes.length) bad(`${d.parts.length} parts declared, ${sizes.length} expected`);
    d.parts.forEach((p, i) => {
      if (p.partNumber !== i + 1 || p.size !== sizes[i] || p.md5.length !== 16) bad(`part ${i + 1} is not declared as expected`);
    });
  }

  /**
   * URLs for one output of `owner` (a job id the caller has checked the
   * builder owns; `storePath` is in the runner's store, verified). Present
   * when the cache has the path: nothing to upload.
   */
  async grant(owner: string, d: Declaration): Promise<Grant> {
    this.validate(d);
    if (await this.cache.has(d.storePath)) return { present: true, puts: [] };
    const fileHash = Hash.fromBytes('sha256', d.fileSha256);
    const key = narFile(fileHash, this.cache.store.compression);
    if (await this.cache.storage.has(key)) {
      // The object exists without a narinfo: the runner publishes the path itself, from its own store.
      const [info] = await queryPathInfos([d.storePath]);
      await uploadClosure(this.cache, info!.references.filter((r) => r !== d.storePath));
      await this.cache.publish(info!);
      return { present: true, puts: [] };
    }
    let uploadId: string | null = null;
    let puts: PresignedRequest[];
    if (d.parts.length === 1) {
      puts = [await this.presigner.presignPut(key, d.fileSize, d.parts[0]!.md5, CONTENT_TYPES.nar)];
    } else {
      uploadId = await this.presigner.createMultipart(key, CONTENT_TYPES.nar);
      puts = await Promise.all(d.parts.map((p) => this.presigner.presignPart(key, uploadId!, p)));
    }
    const id = `${owner}\0${d.storePath}`;
    const previous = this.pending.get(id);
    if (previous?.uploadId) await this.presigner.abort(previous.key, previous.uploadId);
    this.pending.set(id, { key, uploadId, fileHash, fileSize: d.fileSize, parts: d.parts });
    return { present: false, puts };
  }

  /**
   * The builder says it has uploaded: complete, check, publish. Refused
   * (PresignedUploadError) when what S3 holds is not what was declared;
   * then nothing is signed.
   */
  async complete(owner: string, storePath: string, etags: readonly string[]): Promise<PathUpload> {
    const id = `${owner}\0${storePath}`;
    const p = this.pending.get(id);
    if (!p) throw new PresignedUploadError(storePath, 'no upload was presigned for it');
    this.pending.delete(id);
    if (p.uploadId !== null) {
      try {
        await this.presigner.completeMultipart(p.key, p.uploadId, p.parts, etags);
      } catch (e) {
        await this.presigner.abort(p.key, p.uploadId);
        throw e;
      }
    }
    const size = await this.presigner.storedSize(p.key);
    if (size === null) throw new PresignedUploadError(p.key, 'nothing was stored');
    if (size !== p.fileSize) throw new PresignedUploadError(p.key, `${size} bytes stored, ${p.fileSize} declared`);
    // The narinfo comes from the runner's store (imported and verified), never from the builder.
    const [info] = await queryPathInfos([storePath]);
    await this.readBack(p, info!);
    await uploadClosure(this.cache, info!.references.filter((r) => r !== storePath));
    return this.cache.publishStoredNar(info!, p.key, p.fileHash, p.fileSize);
  }

  /**
   * Reads the stored object back on the worker pool and requires its
   * FileHash/FileSize to be the declared ones and, decompressed, the
   * NarHash/NarSize of the runner's verified copy. Otherwise the object is
   * deleted (it is named by the declared FileHash: a refused object would
   * otherwise block the honest one, S3 writes being If-None-Match) and
   * nothing is signed.
   */
  private async readBack(p: Pending, info: LocalPathInfo): Promise<void> {
    const get = await this.presigner.presignGet(p.key);
    const pool = this.cache.pool;
    let why: string | null = null;
    try {
      const got = await withRoom(pool, () => pool.hashCompressedNar(get.url, this.cache.store.compression, get.headers));
      if (got.fileSize !== p.fileSize) why = `${got.fileSize} bytes read back, ${p.fileSize} declared`;
      else if (!Buffer.from(got.fileHash).equals(p.fileHash.bytes)) why = 'its SHA-256 is not the declared FileHash';
      else if (got.narSize !== info.narSize) why = `it decompresses to ${got.narSize} bytes, the output's NAR has ${info.narSize}`;
      else if (!Buffer.from(got.narHash).equals(info.narHash.bytes)) why = "it does not decompress to the output's NAR (NarHash differs)";
    } catch (e) {
      if (!(e instanceof HydrantError)) throw e;
      why = `reading it back failed: ${e.message}`;
    }
    if (why === null) return;
    await this.cache.storage.delete(p.key).catch(() => {});
    throw new PresignedUploadError(p.key, why);
  }

  /** A job ended: its unfinished multipart uploads are aborted (no stored parts are left behind). */
  async discard(owner: string): Promise<void> {
    for (const [id, p] of this.pending) {
      if (!id.startsWith(`${owner}\0`)) continue;
      this.pending.delete(id);
      if (p.uploadId) await this.presigner.abort(p.key, p.uploadId);
    }
  }
}

/** The presigned uploads of `usePresignedUploads`: into the first s3:// cache (the others are published by the runner as before). */
export function presignedUploads(
  enabled: boolean,
  caches: readonly BinaryCache[],
  log: { warn(o: object, msg: string): void; info(o: object, msg: string): void },
): PresignedUploads | undefined {
  if (!enabled) return undefined;
  const cache = caches.find((c) => c.storage instanceof S3Storage);
  if (!cache) {
    log.warn({}, 'usePresignedUploads is set but no remoteStoreAddr is an s3:// cache; outputs are uploaded by the runner');
    return undefined;
  }
  log.info({ cache: cache.location }, 'builders upload outputs straight to the S3 cache (presigned URLs)');
  return new PresignedUploads(cache);
}
