import { constants } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { NarDumpError } from '../errors/index.ts';
import { NAR_MAGIC, padding } from './nar-format.ts';

export interface NarWriteOptions {
  /**
   * Size of the chunks yielded, and of each read from a large file (default 1 MiB).
   * Memory use is a small multiple of this whatever the size of the tree.
   */
  chunkSize?: number;
}

export const DEFAULT_NAR_CHUNK_SIZE = 1 << 20;

const SLASH = Buffer.from('/');
const ZEROS = Buffer.alloc(8);

/**
 * Accumulates the small pieces of a NAR (tokens, names, small files) into
 * chunks of about `chunkSize` bytes, so that a tree of many small files does
 * not turn into millions of tiny yields.
 */
class Packer {
  private buf: Buffer;
  private pos = 0;
  /** Completed chunks waiting to be yielded, in order. */
  readonly ready: Buffer[] = [];

  constructor(private readonly chunkSize: number) {
    this.buf = Buffer.allocUnsafe(chunkSize);
  }

  get length(): number {
    return this.pos;
  }

  /** Makes room for `n` more bytes, retiring the current chunk if needed. */
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.flush();
    if (n > this.buf.length) this.buf = Buffer.allocUnsafe(Math.max(n, this.chunkSize));
  }

  /** Moves whatever is pending to `ready` (the consumer owns yielded chunks, so a new buffer is started). */
  flush(): void {
    if (this.pos === 0) return;
    this.ready.push(this.buf.subarray(0, this.pos));
    this.buf = Buffer.allocUnsafe(this.chunkSize);
    this.pos = 0;
  }

  u64(n: number): void {
    this.ensure(8);
    this.buf.writeBigUInt64LE(BigInt(n), this.pos);
    this.pos += 8;
  }

  pad(len: number): void {
    const p = padding(len);
    if (p === 0) return;
    this.ensure(p);
    this.buf.fill(0, this.pos, this.pos + p);
    this.pos += p;
  }

  str(s: string | Buffer): void {
    const b = typeof s === 'string' ? Buffer.from(s, 'latin1') : s;
    this.ensure(8 + b.length + padding(b.length));
    this.u64(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
    this.pad(b.length);
  }

  /** Reads exactly `size` bytes of `fh` straight into the pending chunk. */
  async fill(fh: FileHandle, size: number, path: Buffer): Promise<void> {
    this.ensure(size);
    await readFully(fh, this.buf, this.pos, size, 0, path);
    this.pos += size;
  }

  take(): Buffer[] {
    return this.ready.splice(0, this.ready.length);
  }
}

async function readFully(fh: FileHandle, buf: Buffer, offset: number, length: number, position: number, path: Buffer): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, offset + done, length - done, position + done);
    if (bytesRead === 0) {
      throw new NarDumpError(path.toString(), `file shrank while being read (expected ${position + length} bytes, got ${position + done})`);
    }
    done += bytesRead;
  }
}

interface DirFrame {
  path: Buffer;
  names: Buffer[];
  next: number;
}

/**
 * Serialises a filesystem path (file, symlink or directory tree) to a NAR, as a
 * stream of chunks identical to `nix-store --dump PATH`. Memory stays bounded:
 * big files are read in `chunkSize` pieces, never whole. Each yielded Buffer is
 * fresh and owned by the consumer.
 */
export async function* narChunks(path: string | Buffer, options: NarWriteOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const chunkSize = options.chunkSize ?? DEFAULT_NAR_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 64) throw new RangeError(`chunkSize must be an integer >= 64, got ${chunkSize}`);
  const out = new Packer(chunkSize);
  const stack: DirFrame[] = [];
  out.str(NAR_MAGIC);

  let pending: Buffer | null = typeof path === 'string' ? Buffer.from(path) : path;
  for (;;) {
    if (pending !== null) {
      const p: Buffer = pending;
      pending = null;
      const st = await lstat(p);
      out.str('(');
      out.str('type');
      if (st.isDirectory()) {
        out.str('directory');
        const names = (await readdir(p, { encoding: 'buffer' })).sort(Buffer.compare);
        stack.push({ path: p, names, next: 0 });
      } else {
        if (st.isFile()) {
          out.str('regular');
          if (st.mode & constants.S_IXUSR) {
            out.str('executable');
            out.str('');
          }
          out.str('contents');
          const size = st.size;
          out.u64(size);
          if (size > 0) {
            const fh = await open(p, constants.O_RDONLY | constants.O_NOFOLLOW);
            try {
              if (size <= chunkSize) {
                await out.fill(fh, size, p);
              } else {
                out.flush();
                yield* out.take();
                for (let position = 0; position < size; ) {
                  const n = Math.min(chunkSize, size - position);
                  const chunk = Buffer.allocUnsafe(n);
                  await readFully(fh, chunk, 0, n, position, p);
                  position += n;
                  yield chunk;
                }
              }
            } finally {
              await fh.close();
            }
          }
          out.pad(size);
        } else if (st.isSymbolicLink()) {
          out.str('symlink');
          out.str('target');
          out.str(await readlink(p, { encoding: 'buffer' }));
        } else {
          throw new NarDumpError(p.toString(), 'unsupported file type (not a regular file, directory or symlink)');
        }
        out.str(')');
        if (stack.length > 0) out.str(')'); // closes the directory entry
      }
    }

    const top = stack[stack.length - 1];
    if (top === undefined) break;
    const name = top.names[top.next];
    if (name !== undefined) {
      top.next++;
      out.str('entry');
      out.str('(');
      out.str('name');
      out.str(name);
      out.str('node');
      pending = Buffer.concat([top.path, SLASH, name]);
    } else {
      stack.pop();
      out.str(')'); // closes the directory node
      if (stack.length > 0) out.str(')'); // closes its entry in the parent
    }
    if (out.length >= chunkSize) out.flush();
    if (out.ready.length > 0) yield* out.take();
  }
  out.flush();
  yield* out.take();
}

/** `narChunks` as a Node Readable stream. */
export function narReadable(path: string | Buffer, options: NarWriteOptions = {}): Readable {
  return Readable.from(narChunks(path, options), { objectMode: false });
}

/** Encodes bytes as one NAR string (length, bytes, zero padding): handy for building NARs by hand in tests. */
export function narString(s: string | Uint8Array): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : Buffer.from(s);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b, ZEROS.subarray(0, padding(b.length))]);
}
