import { createHash } from 'node:crypto';
import { narChunks } from './nar-writer.ts';
import type { NarWriteOptions } from './nar-writer.ts';
import type { ByteSource } from './nar-reader.ts';

export interface NarHashResult {
  /** SHA-256 digest of the NAR (32 bytes). Nix shows it as `sha256:<base32>` or SRI `sha256-<base64>`. */
  sha256: Buffer;
  /** Length of the NAR in bytes (Nix's narSize). */
  size: number;
}

/** SHA-256 and length of any byte stream (e.g. a NAR received from elsewhere). */
export async function hashStream(source: ByteSource): Promise<NarHashResult> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of source) {
    h.update(chunk);
    size += chunk.length;
  }
  return { sha256: h.digest(), size };
}

/**
 * The NAR hash and NAR size of a filesystem path, as `nix-store -q --hash` and
 * `nix hash path` report them, computed by streaming (constant memory).
 * Runs on the calling thread: use the worker pool's narHashPath off the main thread.
 */
export function narHash(path: string, options: NarWriteOptions = {}): Promise<NarHashResult> {
  return hashStream(narChunks(path, { reuseBuffers: true, ...options }));
}
