import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { NixFormatError } from '../errors/index.ts';
import { base32EncodedLength, decodeBase32, encodeBase32 } from './base32.ts';

export type HashAlgo = 'md5' | 'sha1' | 'sha256' | 'sha512';
export type HashEncoding = 'base16' | 'base32' | 'base64' | 'sri';

export const HASH_SIZES: Readonly<Record<HashAlgo, number>> = { md5: 16, sha1: 20, sha256: 32, sha512: 64 };

export function isHashAlgo(s: string): s is HashAlgo {
  return s === 'md5' || s === 'sha1' || s === 'sha256' || s === 'sha512';
}

export function parseHashAlgo(s: string): HashAlgo {
  if (!isHashAlgo(s)) throw new NixFormatError('hash', `unknown hash algorithm '${s}'`);
  return s;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const BASE16_RE = /^[0-9a-fA-F]*$/;

function base64Length(size: number): number {
  return Math.ceil(size / 3) * 4;
}

/** An immutable digest with its algorithm, printable in every form Nix reads or writes. */
export class Hash {
  private constructor(
    readonly algo: HashAlgo,
    readonly bytes: Uint8Array,
  ) {}

  static fromBytes(algo: HashAlgo, bytes: Uint8Array): Hash {
    if (bytes.length !== HASH_SIZES[algo]) {
      throw new NixFormatError('hash', `${algo} digest must be ${HASH_SIZES[algo]} bytes, got ${bytes.length}`);
    }
    return new Hash(algo, Uint8Array.from(bytes));
  }

  toBase16(): string {
    return Buffer.from(this.bytes).toString('hex');
  }

  toBase32(): string {
    return encodeBase32(this.bytes);
  }

  toBase64(): string {
    return Buffer.from(this.bytes).toString('base64');
  }

  /** `sha256-<base64>`, the form `nix path-info --json` prints. */
  toSri(): string {
    return `${this.algo}-${this.toBase64()}`;
  }

  /** `algo:<encoding>` (or bare with withType = false); SRI always carries its type. */
  format(encoding: HashEncoding, withType = true): string {
    if (encoding === 'sri') return this.toSri();
    const body = encoding === 'base16' ? this.toBase16() : encoding === 'base32' ? this.toBase32() : this.toBase64();
    return withType ? `${this.algo}:${body}` : body;
  }

  /** `sha256:<base32>`: narinfo fields and signature fingerprints use this. */
  toString(): string {
    return this.format('base32');
  }

  equals(other: Hash): boolean {
    return this.algo === other.algo && Buffer.from(this.bytes).equals(other.bytes);
  }
}

export function hashBytes(algo: HashAlgo, data: Uint8Array | string): Hash {
  const digest = createHash(algo).update(data).digest();
  return Hash.fromBytes(algo, digest);
}

export function sha256(data: Uint8Array | string): Hash {
  return hashBytes('sha256', data);
}

/** Streams a file through the digest (Nix's `--flat` hash); also returns its size. */
export function hashFile(algo: HashAlgo, path: string): Promise<{ hash: Hash; size: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash(algo);
    let size = 0;
    createReadStream(path)
      .on('data', (chunk) => {
        size += chunk.length;
        h.update(chunk);
      })
      .on('error', reject)
      .on('end', () => resolve({ hash: Hash.fromBytes(algo, h.digest()), size }));
  });
}

/**
 * XOR-folds a digest to `size` bytes: byte i goes into position i mod size.
 * Store path hash parts are the sha256 of a description folded to 20 bytes.
 */
export function compressHash(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < bytes.length; i++) out[i % size] = out[i % size]! ^ bytes[i]!;
  return out;
}

/** Decodes a hash body whose encoding is told apart by its length, as Nix does. */
function decodeBody(algo: HashAlgo, body: string, sri: boolean, original: string): Hash {
  const size = HASH_SIZES[algo];
  if (!sri && body.length === size * 2) {
    if (!BASE16_RE.test(body)) throw new NixFormatError('hash', `invalid base-16 hash '${original}'`);
    return Hash.fromBytes(algo, Buffer.from(body, 'hex'));
  }
  if (!sri && body.length === base32EncodedLength(size)) {
    try {
      return Hash.fromBytes(algo, decodeBase32(body));
    } catch (e) {
      throw new NixFormatError('hash', `invalid base-32 hash '${original}'`, { cause: e });
    }
  }
  if (sri || body.length === base64Length(size)) {
    // Buffer's decoder skips junk silently, so check the alphabet first.
    const bytes = BASE64_RE.test(body) ? Buffer.from(body, 'base64') : null;
    if (!bytes || bytes.length !== size) {
      throw new NixFormatError('hash', `invalid ${sri ? 'SRI' : 'base-64'} hash '${original}'`);
    }
    return Hash.fromBytes(algo, bytes);
  }
  throw new NixFormatError('hash', `hash '${original}' has wrong length for hash type '${algo}'`);
}

/**
 * Parses any form Nix accepts: `algo:<base16|base32|base64>`, SRI `algo-<base64>`,
 * or a bare body when `algo` is given. A prefix that disagrees with `algo` is an error.
 */
export function parseHash(s: string, algo?: HashAlgo): Hash {
  let body = s;
  let prefixed: HashAlgo | undefined;
  let sri = false;
  const colon = s.indexOf(':');
  if (colon >= 0) {
    prefixed = parseHashAlgo(s.slice(0, colon));
    body = s.slice(colon + 1);
  } else {
    const dash = s.indexOf('-');
    if (dash >= 0) {
      prefixed = parseHashAlgo(s.slice(0, dash));
      body = s.slice(dash + 1);
      sri = true;
    }
  }
  if (prefixed && algo && prefixed !== algo) {
    throw new NixFormatError('hash', `hash '${s}' should have type '${algo}'`);
  }
  const type = prefixed ?? algo;
  if (!type) throw new NixFormatError('hash', `hash '${s}' does not include a type`);
  return decodeBody(type, body, sri, s);
}

/** Parses an SRI hash only (`sha256-...`). */
export function parseSri(s: string): Hash {
  const dash = s.indexOf('-');
  if (dash < 0) throw new NixFormatError('hash', `hash '${s}' is not SRI`);
  return decodeBody(parseHashAlgo(s.slice(0, dash)), s.slice(dash + 1), true, s);
}
