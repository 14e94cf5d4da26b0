import { NixFormatError } from '../errors/index.ts';
import { MAX_NAME_LENGTH, MAX_TARGET_LENGTH, NAR_MAGIC, invalidNameReason, padding, showBytes } from './nar-format.ts';

/** Where a node sits in the archive: its entry names from the root (empty for the root itself). */
export type NarPath = readonly Buffer[];

/**
 * What the parser reports, in archive order. A regular file is `regular`, then
 * zero or more `contents` chunks (slices of the input, not copies), then
 * `regular-end`; a directory is `directory`, its children, `directory-end`.
 */
export type NarEvent =
  | { type: 'directory'; path: NarPath }
  | { type: 'directory-end'; path: NarPath }
  | { type: 'regular'; path: NarPath; executable: boolean; size: number; narOffset: number }
  | { type: 'contents'; path: NarPath; chunk: Buffer }
  | { type: 'regular-end'; path: NarPath }
  | { type: 'symlink'; path: NarPath; target: Buffer };

/** '/'-joined, UTF-8-decoded form of a NarPath ('' for the root); lossy for names that are not UTF-8. */
export function formatNarPath(path: NarPath): string {
  return path.map((c) => c.toString('utf8')).join('/');
}

export type ByteSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

const EMPTY = Buffer.alloc(0);
const MAX_TOKEN_LENGTH = 16;

function narError(message: string, offset: number): NixFormatError {
  return new NixFormatError('NAR', `${message} (at byte ${offset})`);
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/**
 * Pull-based reader over a chunked byte stream, tracking the absolute offset.
 * Exposed so that protocol code can parse a NAR embedded in a longer stream
 * (pass `{ trailing: 'allow' }` to parseNar) and go on reading after it.
 */
export class NarByteReader {
  private chunk: Buffer = EMPTY;
  private pos = 0;
  private ended = false;
  /** Bytes consumed so far. */
  offset = 0;

  private constructor(private readonly it: AsyncIterator<Uint8Array> | Iterator<Uint8Array>) {}

  static from(source: ByteSource): NarByteReader {
    const it = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();
    return new NarByteReader(it);
  }

  private get available(): number {
    return this.chunk.length - this.pos;
  }

  /** Loads the next non-empty input chunk; false at end of input. */
  private async more(): Promise<boolean> {
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      if (r.value.length > 0) {
        this.chunk = asBuffer(r.value);
        this.pos = 0;
        return true;
      }
    }
    return false;
  }

  private truncated(what: string): NixFormatError {
    return narError(`truncated input: unexpected end while reading ${what}`, this.offset);
  }

  /** Exactly `n` bytes; a slice of the input when it lies within one chunk. */
  async read(n: number, what: string): Promise<Buffer> {
    if (this.available >= n) {
      const b = this.chunk.subarray(this.pos, this.pos + n);
      this.pos += n;
      this.offset += n;
      return b;
    }
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      if (this.available === 0 && !(await this.more())) throw this.truncated(what);
      const take = Math.min(need, this.available);
      parts.push(this.chunk.subarray(this.pos, this.pos + take));
      this.pos += take;
      this.offset += take;
      need -= take;
    }
    return Buffer.concat(parts, n);
  }

  /** Yields exactly `n` bytes as slices of the input chunks. */
  async *stream(n: number, what: string): AsyncGenerator<Buffer, void, undefined> {
    let need = n;
    while (need > 0) {
      if (this.available === 0 && !(await this.more())) throw this.truncated(what);
      const take = Math.min(need, this.available);
      const b = this.chunk.subarray(this.pos, this.pos + take);
      this.pos += take;
      this.offset += take;
      need -= take;
      yield b;
    }
  }

  async u64(what: string): Promise<number> {
    const at = this.offset;
    const v = (await this.read(8, what)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw narError(`${what} is implausibly large (${v})`, at);
    return Number(v);
  }

  async padding(len: number, what: string): Promise<void> {
    const p = padding(len);
    if (p === 0) return;
    const at = this.offset;
    const b = await this.read(p, `padding of ${what}`);
    for (const byte of b) if (byte !== 0) throw narError(`non-zero padding after ${what}`, at);
  }

  /** A NAR string of at most `max` bytes, copied out of the input. */
  async string(max: number, what: string): Promise<Buffer> {
    const at = this.offset;
    const len = await this.u64(`length of ${what}`);
    if (len > max) throw narError(`${what} too long (${len} bytes, at most ${max} allowed)`, at);
    const b = Buffer.from(await this.read(len, what));
    await this.padding(len, what);
    return b;
  }

  /**
   * Fast path for the many short strings of a NAR: when a whole string of at
   * most `max` bytes, with valid padding, is already in the current chunk, it
   * is consumed synchronously and returned (a slice of the input). Otherwise
   * null, and nothing is consumed: the caller takes the general path, which
   * also reports any error.
   */
  tryShortString(max: number): Buffer | null {
    const avail = this.available;
    if (avail < 8) return null;
    const c = this.chunk;
    const at = this.pos;
    if (c.readUInt32LE(at + 4) !== 0) return null;
    const len = c.readUInt32LE(at);
    if (len > max) return null;
    const end = at + 8 + len;
    const total = 8 + len + padding(len);
    if (avail < total) return null;
    for (let i = end; i < at + total; i++) if (c[i] !== 0) return null;
    this.pos += total;
    this.offset += total;
    return c.subarray(at + 8, end);
  }

  /** True when the input has no more bytes. */
  async atEnd(): Promise<boolean> {
    return this.available === 0 && !(await this.more());
  }

  /** The unread part of the current chunk (for callers that continue after the NAR). */
  takeBuffered(): Buffer {
    const b = this.chunk.subarray(this.pos);
    this.chunk = EMPTY;
    this.pos = 0;
    return b;
  }

  /** Stops pulling from the source (lets a generator or stream clean up). */
  async close(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      await this.it.return?.();
    }
  }
}

export interface NarParseOptions {
  /**
   * What to do with bytes after the archive: 'reject' (default) fails with a
   * format error; 'allow' stops right after the archive, leaving the rest in
   * the reader (only meaningful when a NarByteReader is passed).
   */
  trailing?: 'reject' | 'allow';
}

interface DirState {
  path: NarPath;
  prev: Buffer | null;
}

/**
 * Parses a NAR from a chunked byte stream into events, in constant memory
 * (file contents are passed through as slices of the input). Validation is
 * strict: only the canonical form `nix-store --dump` produces is accepted, so
 * a NAR that parses restores to a tree whose NAR is byte-identical.
 */
export async function* parseNar(source: ByteSource | NarByteReader, options: NarParseOptions = {}): AsyncGenerator<NarEvent, void, undefined> {
  const ownReader = !(source instanceof NarByteReader);
  const r = source instanceof NarByteReader ? source : NarByteReader.from(source);
  try {
    const slowToken = async (what: string): Promise<string> => {
      const at = r.offset;
      const len = await r.u64(what);
      if (len > MAX_TOKEN_LENGTH) throw narError(`expected ${what}, found a ${len}-byte string`, at);
      const s = (await r.read(len, what)).toString('latin1');
      await r.padding(len, what);
      return s;
    };
    // Tokens are read synchronously when they are already buffered (nearly always).
    const token = (what: string): string | Promise<string> => {
      const b = r.tryShortString(MAX_TOKEN_LENGTH);
      return b !== null ? b.toString('latin1') : slowToken(what);
    };
    const mismatch = (tok: string, got: string, at: number) => narError(`expected '${tok}', found ${JSON.stringify(got)}`, at);
    const slowExpect = async (tok: string, at: number): Promise<void> => {
      const got = await slowToken(`'${tok}'`);
      if (got !== tok) throw mismatch(tok, got, at);
    };
    const expect = (tok: string): void | Promise<void> => {
      const at = r.offset;
      const b = r.tryShortString(MAX_TOKEN_LENGTH);
      if (b === null) return slowExpect(tok, at);
      if (b.length !== tok.length || b.toString('latin1') !== tok) throw mismatch(tok, b.toString('latin1'), at);
    };

    {
      const at = r.offset;
      let magic: string;
      try {
        magic = await token('the NAR magic');
      } catch (e) {
        if (e instanceof NixFormatError && r.offset <= 8 + MAX_TOKEN_LENGTH) throw narError(`not a NAR (bad magic): ${e.message}`, at);
        throw e;
      }
      if (magic !== NAR_MAGIC) throw narError(`not a NAR (bad magic ${JSON.stringify(magic)})`, at);
    }

    const stack: DirState[] = [];
    let node: NarPath | null = [];
    for (;;) {
      if (node !== null) {
        const path: NarPath = node;
        node = null;
        await expect('(');
        await expect('type');
        const typeAt = r.offset;
        const type = await token('a node type');
        if (type === 'directory') {
          yield { type: 'directory', path };
          stack.push({ path, prev: null });
        } else {
          if (type === 'regular') {
            let executable = false;
            let tokAt = r.offset;
            let tok = await token("'executable' or 'contents'");
            if (tok === 'executable') {
              const markAt = r.offset;
              const mark = await r.string(MAX_TOKEN_LENGTH, 'executable marker');
              if (mark.length !== 0) throw narError('executable marker has a non-empty value', markAt);
              executable = true;
              tokAt = r.offset;
              tok = await token("'contents'");
            }
            if (tok !== 'contents') throw narError(`expected 'contents', found ${JSON.stringify(tok)}`, tokAt);
            const size = await r.u64('file size');
            yield { type: 'regular', path, executable, size, narOffset: r.offset };
            for await (const chunk of r.stream(size, 'file contents')) yield { type: 'contents', path, chunk };
            await r.padding(size, 'file contents');
            await expect(')');
            yield { type: 'regular-end', path };
          } else if (type === 'symlink') {
            await expect('target');
            const at = r.offset;
            const target = await r.string(MAX_TARGET_LENGTH, 'symlink target');
            if (target.length === 0) throw narError('empty symlink target', at);
            if (target.includes(0)) throw narError('symlink target contains a NUL byte', at);
            await expect(')');
            yield { type: 'symlink', path, target };
          } else {
            throw narError(`unknown node type ${JSON.stringify(type)}`, typeAt);
          }
          if (stack.length > 0) await expect(')'); // closes the entry
        }
      }

      const top = stack[stack.length - 1];
      if (top === undefined) break;
      const at = r.offset;
      const tok = await token("'entry' or ')'");
      if (tok === 'entry') {
        await expect('(');
        await expect('name');
        const nameAt = r.offset;
        const name = await r.string(MAX_NAME_LENGTH, 'entry name');
        const bad = invalidNameReason(name);
        if (bad !== null) throw narError(`invalid entry name ${showBytes(name)}: ${bad}`, nameAt);
        if (top.prev !== null) {
          const c = Buffer.compare(top.prev, name);
          if (c === 0) throw narError(`duplicate entry ${showBytes(name)}`, nameAt);
          if (c > 0) throw narError(`entries not sorted: ${showBytes(name)} after ${showBytes(top.prev)}`, nameAt);
        }
        top.prev = name;
        await expect('node');
        node = [...top.path, name];
      } else if (tok === ')') {
        stack.pop();
        yield { type: 'directory-end', path: top.path };
        if (stack.length > 0) await expect(')'); // closes the entry
      } else {
        throw narError(`expected 'entry' or ')', found ${JSON.stringify(tok)}`, at);
      }
    }

    if ((options.trailing ?? 'reject') === 'reject' && !(await r.atEnd())) {
      throw narError('trailing data after the end of the archive', r.offset);
    }
  } finally {
    if (ownReader) await r.close();
  }
}
