/**
 * Checking that a floating content-addressed output is where its content
 * says it must be, as Nix 2.8 computes it (LocalDerivationGoal's
 * newInfoFromCA, and LocalStore::addToStore's check of a CA path):
 *
 * - the content hash is taken over the NAR (recursive) or the file's bytes
 *   (flat) with every occurrence of the path's own hash part zeroed, followed
 *   by `|<offset>` for each occurrence (HashModuloSink), so that a
 *   self-reference does not make the path depend on itself;
 * - the path is makeFixedOutputPath over that hash, named after the
 *   derivation and output, with the other references and a self-reference
 *   flag.
 *
 * A builder's report of a floating output (path, references, NAR) is
 * accepted only if this gives the same path.
 */
import { createHash, type Hash as Digest } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { NixFormatError } from '../errors/index.ts';
import { Hash, type HashAlgo } from './hash.ts';
import { narChunks } from './nar-writer.ts';
import { type FileIngestionMethod, makeFixedOutputPath, outputPathName, parseStorePath, STORE_DIR } from './store-path.ts';

/** Nix's HashModuloSink: a streaming hash with `modulus` zeroed out, then the match offsets appended. */
export class HashModulo {
  private readonly h: Digest;
  private readonly mod: Buffer;
  private prev: Buffer = Buffer.alloc(0);
  private pos = 0;
  private readonly matches: number[] = [];

  constructor(
    private readonly algo: HashAlgo,
    modulus: string,
  ) {
    if (modulus.length === 0) throw new NixFormatError('hash', 'empty modulus');
    this.h = createHash(algo);
    this.mod = Buffer.from(modulus, 'utf8');
  }

  update(chunk: Uint8Array): void {
    // A copy: matches are zeroed in place.
    const s = Buffer.concat([this.prev, chunk]);
    for (let j = s.indexOf(this.mod); j >= 0; j = s.indexOf(this.mod, j + this.mod.length)) {
      this.matches.push(this.pos + j);
      s.fill(0, j, j + this.mod.length);
    }
    // Keep what could still be the start of a match split across chunks.
    const keep = Math.min(s.length, this.mod.length - 1);
    const consumed = s.length - keep;
    this.h.update(s.subarray(0, consumed));
    this.pos += consumed;
    this.prev = s.subarray(consumed);
  }

  digest(): Hash {
    this.h.update(this.prev);
    this.pos += this.prev.length;
    this.prev = Buffer.alloc(0);
    for (const m of this.matches) this.h.update(`|${m}`);
    return Hash.fromBytes(this.algo, this.h.digest());
  }
}

/** The content hash of the store path whose files are at `fsPath`, modulo the path's own hash part. */
export async function contentHashModulo(fsPath: string, storePath: string, method: FileIngestionMethod, algo: HashAlgo): Promise<Hash> {
  const sink = new HashModulo(algo, parseStorePath(storePath).hashPart);
  if (method === 'recursive') {
    for await (const c of narChunks(fsPath)) sink.update(c);
  } else {
    const st = await lstat(fsPath);
    if (!st.isFile() || (st.mode & 0o100) !== 0) throw new NixFormatError('content address', `${storePath}: a flat output must be a non-executable regular file`);
    for await (const c of createReadStream(fsPath, { highWaterMark: 1 << 20 })) sink.update(c as Buffer);
  }
  return sink.digest();
}

export interface FloatingOutput {
  /** The path the builder reports for the output. */
  storePath: string;
  /** Where its files are readable (the store path itself, or a private store's real path). */
  fsPath: string;
  /** Its references, full paths, possibly itself. */
  references: readonly string[];
  drvName: string;
  outputName: string;
  method: FileIngestionMethod;
  algo: HashAlgo;
}

export interface FloatingOutputCheck {
  /** True when the reported path is the one its content gives. */
  ok: boolean;
  /** The path its content gives. */
  expected: string;
  /** Its content hash (the `fixed:[r:]<algo>:<hash>` content address Nix records). */
  hash: Hash;
}

/** Computes where a floating CA output's content puts it, and compares with the reported path. */
export async function checkFloatingOutput(o: FloatingOutput, storeDir: string = STORE_DIR): Promise<FloatingOutputCheck> {
  const hash = await contentHashModulo(o.fsPath, o.storePath, o.method, o.algo);
  const self = o.references.includes(o.storePath);
  const others = o.references.filter((r) => r !== o.storePath);
  const expected = makeFixedOutputPath(o.method, hash, outputPathName(o.drvName, o.outputName), others, self, storeDir);
  return { ok: expected === o.storePath, expected, hash };
}

/** A NAR string: its length (u64, little-endian), its bytes, zero padding to 8. */
function narString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
}

/** The NAR of a non-executable regular file up to its contents' length: the only NAR a flat output can have. */
const FLAT_NAR_HEADER = Buffer.concat(['nix-archive-1', '(', 'type', 'regular', 'contents'].map(narString));
const FLAT_NAR_PREFIX = FLAT_NAR_HEADER.length + 8;

/**
 * checkFloatingOutput over the output's NAR as it streams (an upload, before
 * anything is imported): `update` with every NAR chunk in order, then
 * `result`. A flat output's content is the file's bytes inside its NAR; a
 * NAR that is not a non-executable regular file gives `ok: false`.
 */
export class FloatingNarCheck {
  private readonly sink: HashModulo;
  private head: Buffer = Buffer.alloc(0);
  /** Flat: the byte offset in the NAR where the file's contents end, once the header is read. */
  private contentsEnd = -1;
  private pos = 0;
  private notFlat = false;

  constructor(private readonly o: Omit<FloatingOutput, 'fsPath'>) {
    this.sink = new HashModulo(o.algo, parseStorePath(o.storePath).hashPart);
  }

  update(chunk: Uint8Array): void {
    if (this.o.method === 'recursive') {
      this.sink.update(chunk);
      return;
    }
    let c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.contentsEnd < 0 && !this.notFlat) {
      const need = FLAT_NAR_PREFIX - this.head.length;
      this.head = Buffer.concat([this.head, c.subarray(0, need)]);
      this.pos += Math.min(need, c.length);
      c = c.subarray(need);
      if (this.head.length < FLAT_NAR_PREFIX) return;
      if (!this.head.subarray(0, FLAT_NAR_HEADER.length).equals(FLAT_NAR_HEADER)) {
        this.notFlat = true;
        return;
      }
      this.contentsEnd = this.pos + Number(this.head.readBigUInt64LE(FLAT_NAR_HEADER.length));
    }
    if (this.notFlat || c.length === 0) return;
    const take = Math.max(0, Math.min(c.length, this.contentsEnd - this.pos));
    if (take > 0) this.sink.update(c.subarray(0, take));
    this.pos += c.length;
  }

  result(): FloatingOutputCheck {
    const hash = this.sink.digest();
    const self = this.o.references.includes(this.o.storePath);
    const others = this.o.references.filter((r) => r !== this.o.storePath);
    const expected = makeFixedOutputPath(this.o.method, hash, outputPathName(this.o.drvName, this.o.outputName), others, self, STORE_DIR);
    const flatOk = this.o.method === 'recursive' || (!this.notFlat && this.contentsEnd >= 0);
    return { ok: flatOk && expected === this.o.storePath, expected, hash };
  }
}
