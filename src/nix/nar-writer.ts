import { closeSync, constants, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { isMainThread } from 'node:worker_threads';
import { NarDumpError } from '../errors/index.ts';
import { NAR_MAGIC, padding } from './nar-format.ts';

export interface NarWriteOptions {
  /**
   * Size of the chunks yielded, and of each read from a large file (default 1 MiB).
   * Memory use is a small multiple of this whatever the size of the tree.
   */
  chunkSize?: number;
  /**
   * Reuse one buffer for the pieces of large files: each yielded chunk is then
   * valid only until the next one is requested. For consumers that finish with
   * a chunk synchronously (hashing); it avoids a gigabyte of garbage per
   * gigabyte hashed.
   */
  reuseBuffers?: boolean;
  /**
   * How to do the per-file work (lstat, readdir, readlink, reading files that
   * fit in a chunk). 'sync' costs ~10 µs a file where Node 20's fs.promises
   * costs 100 µs or more (several thread-pool round trips): right on a worker
   * thread, wrong on the main thread, whose event loop it would block.
   * Large files are always read asynchronously, one chunk ahead.
   * Default: 'sync' off the main thread, 'async' on it.
   */
  io?: 'sync' | 'async';
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

  /** Room for `n` bytes to be written straight into the pending chunk: [buffer, offset]. Call commit(n) once filled. */
  reserve(n: number): [Buffer, number] {
    this.ensure(n);
    return [this.buf, this.pos];
  }

  commit(n: number): void {
    this.pos += n;
  }

  take(): Buffer[] {
    return this.ready.splice(0, this.ready.length);
  }
}

async function readFully(fh: FileHandle, buf: Buffer, offset: number, length: number, position: number, path: Buffer): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, offset + done, length - done, position + done);
    if (bytesRead === 0) throw shrank(path, position + length, position + done);
    done += bytesRead;
  }
}

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW;

function shrank(path: Buffer, expected: number, got: number): NarDumpError {
  return new NarDumpError(path.toString(), `file shrank while being read (expected ${expected} bytes, got ${got})`);
}

/** The per-file operations, synchronous or not (see NarWriteOptions.io). */
interface FileIo {
  lstat(p: Buffer): Stats | Promise<Stats>;
  readdir(p: Buffer): Buffer[] | Promise<Buffer[]>;
  readlink(p: Buffer): Buffer | Promise<Buffer>;
  /** Reads the whole `size`-byte file at `p` into buf[offset..]. */
  readSmall(p: Buffer, size: number, buf: Buffer, offset: number): void | Promise<void>;
}

const asyncIo: FileIo = {
  lstat: (p) => lstat(p),
  readdir: (p) => readdir(p, { encoding: 'buffer' }),
  readlink: (p) => readlink(p, { encoding: 'buffer' }),
  async readSmall(p, size, buf, offset) {
    const fh = await open(p, OPEN_FLAGS);
    try {
      await readFully(fh, buf, offset, size, 0, p);
    } finally {
      await fh.close();
    }
  },
};

const syncIo: FileIo = {
  lstat: (p) => lstatSync(p),
  readdir: (p) => readdirSync(p, { encoding: 'buffer' }),
  readlink: (p) => readlinkSync(p, { encoding: 'buffer' }),
  readSmall(p, size, buf, offset) {
    const fd = openSync(p, OPEN_FLAGS);
    try {
      for (let done = 0; done < size; ) {
        const n = readSync(fd, buf, offset + done, size - done, done);
        if (n === 0) throw shrank(p, size, done);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
  },
};

/**
 * Yields the `size` bytes of a large file in `chunkSize` pieces, reading one
 * piece ahead so that the disk read overlaps the consumer's work (hashing,
 * compressing). With `reuse`, two buffers alternate: the one being read into
 * is never the one the consumer holds.
 */
async function* readLarge(fh: FileHandle, size: number, chunkSize: number, reuse: boolean, path: Buffer): AsyncGenerator<Buffer, void, undefined> {
  const buffers = reuse ? [Buffer.allocUnsafe(chunkSize), Buffer.allocUnsafe(chunkSize)] : null;
  let index = 0;
  const start = (position: number): Promise<Buffer> => {
    const n = Math.min(chunkSize, size - position);
    const chunk = buffers ? buffers[index++ % 2]!.subarray(0, n) : Buffer.allocUnsafe(n);
    return readFully(fh, chunk, 0, n, position, path).then(() => chunk);
  };
  let next: Promise<Buffer> | null = start(0);
  try {
    for (let position = 0; position < size; ) {
      const chunk: Buffer = await next!;
      next = null;
      position += chunk.length;
      if (position < size) next = start(position);
      yield chunk;
    }
  } finally {
    // Abandoned early (consumer stopped or failed): let the read in flight finish before the file is closed.
    if (next !== null) await next.catch(() => {});
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
 * fresh and owned by the consumer, unless `reuseBuffers` is set.
 */
export async function* narChunks(path: string | Buffer, options: NarWriteOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const chunkSize = options.chunkSize ?? DEFAULT_NAR_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 64) throw new RangeError(`chunkSize must be an integer >= 64, got ${chunkSize}`);
  const io = (options.io ?? (isMainThread ? 'async' : 'sync')) === 'sync' ? syncIo : asyncIo;
  const out = new Packer(chunkSize);
  const stack: DirFrame[] = [];
  out.str(NAR_MAGIC);

  let pending: Buffer | null = typeof path === 'string' ? Buffer.from(path) : path;
  for (;;) {
    if (pending !== null) {
      const p: Buffer = pending;
      pending = null;
      const st = await io.lstat(p);
      out.str('(');
      out.str('type');
      if (st.isDirectory()) {
        out.str('directory');
        const names = (await io.readdir(p)).sort(Buffer.compare);
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
          if (size > 0 && size <= chunkSize) {
            const [buf, offset] = out.reserve(size);
            await io.readSmall(p, size, buf, offset);
            out.commit(size);
          } else if (size > 0) {
            out.flush();
            yield* out.take();
            const fh = await open(p, OPEN_FLAGS);
            try {
              yield* readLarge(fh, size, chunkSize, options.reuseBuffers ?? false, p);
            } finally {
              await fh.close();
            }
          }
          out.pad(size);
        } else if (st.isSymbolicLink()) {
          out.str('symlink');
          out.str('target');
          out.str(await io.readlink(p));
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
