import type { CacheStorage, PutBody, PutOptions, StoredEntry, StoredObject, TempFileOptions } from './storage.ts';

/**
 * A storage whose every key starts with `prefix` (a backup bucket's
 * `prefix`, as Hydra's S3Backup plugin had): the binary cache lives under
 * `<prefix>` inside the bucket, so a client reads it at `…/BUCKET/<prefix>`.
 */
export class PrefixedStorage implements CacheStorage {
  constructor(
    private readonly inner: CacheStorage,
    readonly prefix: string,
  ) {}

  get location(): string {
    return `${this.inner.location}/${this.prefix}`;
  }

  get syncTempFiles(): boolean {
    return this.inner.syncTempFiles;
  }

  has(key: string): Promise<boolean> {
    return this.inner.has(this.prefix + key);
  }

  get(key: string): Promise<StoredObject | null> {
    return this.inner.get(this.prefix + key);
  }

  put(key: string, body: PutBody, options: PutOptions): Promise<boolean> {
    return this.inner.put(this.prefix + key, body, options);
  }

  tempFile(key: string, options?: TempFileOptions): Promise<string> {
    return this.inner.tempFile(this.prefix + key, options);
  }

  async *list(prefix: string): AsyncIterable<StoredEntry> {
    for await (const e of this.inner.list(this.prefix + prefix)) yield { ...e, key: e.key.slice(this.prefix.length) };
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(this.prefix + key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
