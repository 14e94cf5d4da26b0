/**
 * A client of Nix's serve protocol (`nix-store --serve --write`), over the
 * stdio of a child process: `ssh host nix-store --serve --write` for a build
 * machine, or a local `nix-store --serve --write` (localhost, or a private
 * store). This is the protocol Hydra's C++ queue runner speaks to its
 * machines (docs/SSH-MACHINES.md).
 *
 * The wire (framing, constants, types) is serve-wire.ts. Handshake: the
 * client sends SERVE_MAGIC_1 and its version, the server answers
 * SERVE_MAGIC_2 and its version (Nix 2.8: 2.7).
 * A field added in protocol minor m is on the wire when both sides are at m
 * or later; the server reads requests by the client's version.
 *
 * Replies come from a peer that is not trusted: strings and counts are
 * bounded, NARs parsed strictly (src/nix/nar-reader.ts).
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { NixFormatError, ServeConnectionError, ServeProtocolError } from '../errors/index.ts';
import type { Derivation } from './derivation.ts';
import type { Hash } from './hash.ts';
import { NarByteReader, parseNar, type ByteSource } from './nar-reader.ts';
import {
  buildDerivationRequest, protocolMajor, protocolMinor, SERVE_CLIENT_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2, SERVE_MIN_VERSION, ServeCommand, ServeFrame,
  type ServeBuildResult, type ServeBuildSettings, type ServePathInfo,
} from './serve-wire.ts';

// Bounds on what a peer may send (a hostile one could otherwise make us allocate without end).
const MAX_PATH = 4096;
const MAX_TEXT = 16 * 1024 * 1024;
const MAX_ITEMS = 1_000_000;

/** What AddToStoreNar sends about a path besides its NAR. */
export interface AddToStoreInfo {
  path: string;
  deriver: string | null;
  narHash: Hash;
  narSize: number;
  references: readonly string[];
  registrationTime?: number;
  ultimate?: boolean;
  sigs?: readonly string[];
  ca?: string | null;
}

/** Our side of the pipe to the peer closed: it is gone (its stderr says why). */
class PeerGone extends Error {
  constructor() {
    super('the peer closed its input');
  }
}

/**
 * One `nix-store --serve --write` session: one command at a time, in order.
 * Any failure (the process ended, a malformed reply) breaks the connection:
 * `broken` is set and every later call fails; the owner ends the process.
 */
export class ServeConnection {
  /** The peer's protocol version (e.g. 0x207). */
  remoteVersion = 0;
  #broken: Error | null = null;
  #busy = false;
  #stdoutEnded = false;
  #closed = false;
  #stderrTail = '';
  #logSink: ((chunk: Buffer) => void) | null = null;
  // The chunk the reader is in and where it starts in the stream, so a NAR's raw bytes can be passed on.
  #lastChunk: Buffer = Buffer.alloc(0);
  #lastStart = 0;
  #pulled = 0;
  #capture: Buffer[] | null = null;
  private readonly reader: NarByteReader;

  private constructor(
    private readonly proc: ChildProcessWithoutNullStreams,
    /** For messages: the machine's name. */
    readonly machine: string,
  ) {
    this.reader = NarByteReader.from(this.#source());
    proc.stdin.on('error', () => {}); // EPIPE when the peer is gone; the next read says so
    proc.once('close', () => (this.#closed = true));
    proc.on('error', (e) => this.#fail(new ServeConnectionError(machine, String(e))));
    proc.stderr.on('data', (b: Buffer) => {
      if (this.#logSink) this.#logSink(b);
      this.#stderrTail = (this.#stderrTail + b.toString('utf8')).slice(-8192);
    });
  }

  async *#source(): AsyncGenerator<Buffer> {
    for await (const c of this.proc.stdout as AsyncIterable<Buffer>) {
      this.#lastStart = this.#pulled;
      this.#lastChunk = c;
      this.#pulled += c.length;
      this.#capture?.push(c);
      yield c;
    }
    this.#stdoutEnded = true;
  }

  /** Runs the handshake over `proc`'s stdio; rejects with ServeConnectionError or ServeProtocolError. */
  static async open(proc: ChildProcessWithoutNullStreams, machine: string): Promise<ServeConnection> {
    const c = new ServeConnection(proc, machine);
    await c.#run(async () => {
      await c.#send(new ServeFrame().num(SERVE_MAGIC_1).num(SERVE_CLIENT_VERSION).bytes());
      const magic = (await c.reader.read(8, 'magic')).readBigUInt64LE(0);
      if (magic !== BigInt(SERVE_MAGIC_2)) throw new ServeProtocolError(machine, `not a serve process (magic 0x${magic.toString(16)})`);
      const version = await c.reader.u64('protocol version');
      if (protocolMajor(version) !== 0x200 || version < SERVE_MIN_VERSION) {
        throw new ServeProtocolError(machine, `unsupported protocol version 0x${version.toString(16)} (need 2.${protocolMinor(SERVE_MIN_VERSION)} or later in 2.x)`);
      }
      c.remoteVersion = version;
    });
    return c;
  }

  /** Whether the connection can take no more commands. */
  get broken(): boolean {
    return this.#broken !== null || this.#stdoutEnded || this.proc.exitCode !== null || this.proc.signalCode !== null;
  }

  /** The last 8 KiB the peer wrote to stderr (ssh's errors land there). */
  get stderrTail(): string {
    return this.#stderrTail;
  }

  /** The protocol minor both sides speak. */
  get minor(): number {
    return Math.min(protocolMinor(this.remoteVersion), protocolMinor(SERVE_CLIENT_VERSION));
  }

  /** Sends stderr to `sink` (a build's log) instead of only keeping its tail; null to stop. */
  setLogSink(sink: ((chunk: Buffer) => void) | null): void {
    this.#logSink = sink;
  }

  #fail(e: Error): Error {
    this.#broken ??= e;
    return this.#broken;
  }

  /** Runs one command; a failure breaks the connection and comes out as a serve error naming the machine. */
  async #run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#broken) throw this.#broken;
    if (this.#busy) throw new ServeProtocolError(this.machine, 'a command was sent while another one was running');
    this.#busy = true;
    try {
      return await fn();
    } catch (e) {
      await this.#peerSettled(e);
      throw this.#fail(this.#classify(e));
    } finally {
      this.#busy = false;
    }
  }

  /**
   * When the peer is gone, its stderr (ssh's reason, Nix's error) may still be
   * in the pipe: wait until the process and its pipes have closed. Bounded, in
   * case a process the peer left behind holds a pipe open.
   */
  async #peerSettled(e: unknown): Promise<void> {
    const gone = e instanceof PeerGone || this.#stdoutEnded || this.proc.exitCode !== null || this.proc.signalCode !== null;
    if (!gone || this.#closed) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 10_000);
      t.unref();
      this.proc.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  #classify(e: unknown): Error {
    if (e instanceof ServeConnectionError || e instanceof ServeProtocolError) return e;
    if (e instanceof PeerGone || this.#stdoutEnded || this.proc.exitCode !== null || this.proc.signalCode !== null) {
      return new ServeConnectionError(this.machine, this.#stderrTail, { cause: e });
    }
    if (e instanceof NixFormatError) return new ServeProtocolError(this.machine, `malformed reply: ${e.message}`, { cause: e });
    return e instanceof Error ? e : new Error(String(e));
  }

  async #send(data: Buffer | Uint8Array): Promise<void> {
    const stdin = this.proc.stdin;
    if (stdin.destroyed || stdin.writableEnded) throw new PeerGone();
    if (stdin.write(data)) return;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        stdin.off('drain', done);
        stdin.off('close', gone);
        resolve();
      };
      const gone = (): void => {
        stdin.off('drain', done);
        reject(new PeerGone());
      };
      stdin.once('drain', done);
      stdin.once('close', gone);
    });
  }

  async #count(what: string): Promise<number> {
    const n = await this.reader.u64(what);
    if (n > MAX_ITEMS) throw new ServeProtocolError(this.machine, `${what}: ${n} items is more than ${MAX_ITEMS}`);
    return n;
  }

  async #str(max: number, what: string): Promise<string> {
    return (await this.reader.string(max, what)).toString('utf8');
  }

  async #paths(what: string): Promise<string[]> {
    const n = await this.#count(what);
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(await this.#str(MAX_PATH, what));
    return out;
  }

  /**
   * The valid ones among `paths`. `lock` asks the peer to hold them against
   * its garbage collector for the session; `substitute` lets it fetch missing
   * ones from its own substituters first (both need --write).
   */
  queryValidPaths(paths: readonly string[], options: { lock?: boolean; substitute?: boolean } = {}): Promise<string[]> {
    return this.#run(async () => {
      await this.#send(new ServeFrame().num(ServeCommand.QueryValidPaths).num(options.lock ?? false).num(options.substitute ?? false).strs(paths).bytes());
      return this.#paths('valid paths');
    });
  }

  /** Infos of the valid ones among `paths` (invalid ones are left out). */
  queryPathInfos(paths: readonly string[]): Promise<ServePathInfo[]> {
    return this.#run(async () => {
      await this.#send(new ServeFrame().num(ServeCommand.QueryPathInfos).strs(paths).bytes());
      const out: ServePathInfo[] = [];
      for (;;) {
        const path = await this.#str(MAX_PATH, 'path');
        if (path === '') return out;
        if (out.length >= MAX_ITEMS) throw new ServeProtocolError(this.machine, 'too many path infos');
        const deriver = await this.#str(MAX_PATH, 'deriver');
        const references = await this.#paths('references');
        const downloadSize = await this.reader.u64('download size');
        const narSize = await this.reader.u64('NAR size');
        // Both sides are at 2.4 or later (SERVE_MIN_VERSION): the hash, CA and signatures follow.
        const narHash = await this.#str(MAX_PATH, 'NAR hash');
        const ca = await this.#str(MAX_PATH, 'content address');
        const nSigs = await this.#count('signatures');
        const sigs: string[] = [];
        for (let i = 0; i < nSigs; i++) sigs.push(await this.#str(MAX_PATH, 'signature'));
        out.push({ path, deriver: deriver || null, references, downloadSize, narSize, narHash, ca: ca || null, sigs });
      }
    });
  }

  /**
   * The NAR of a valid path, streamed as it arrives (the reply has no length:
   * it ends where the archive does, so it is parsed on the way, strictly).
   * The caller hashes and checks it; the connection is unusable until the
   * stream has been read to its end.
   */
  dumpStorePath(path: string): AsyncGenerator<Buffer, void, undefined> {
    const self = this;
    return (async function* () {
      if (self.#broken) throw self.#broken;
      if (self.#busy) throw new ServeProtocolError(self.machine, 'a command was sent while another one was running');
      self.#busy = true;
      let complete = false;
      try {
        await self.#send(new ServeFrame().num(ServeCommand.DumpStorePath).str(path).bytes());
        const r = self.reader;
        // Bytes of the stream from `emitted` on, as the reader pulled them.
        const pending: Buffer[] = [];
        let emitted = r.offset;
        if (self.#lastStart + self.#lastChunk.length > emitted) pending.push(self.#lastChunk.subarray(emitted - self.#lastStart));
        self.#capture = pending;
        for await (const _event of parseNar(r, { trailing: 'allow' })) {
          let n = r.offset - emitted;
          emitted = r.offset;
          const out: Buffer[] = [];
          while (n > 0) {
            const head = pending[0]!;
            if (head.length <= n) {
              out.push(head);
              pending.shift();
              n -= head.length;
            } else {
              out.push(head.subarray(0, n));
              pending[0] = head.subarray(n);
              n = 0;
            }
          }
          self.#capture = pending;
          for (const b of out) yield b;
        }
        complete = true;
      } catch (e) {
        await self.#peerSettled(e);
        throw self.#fail(self.#classify(e));
      } finally {
        self.#capture = null;
        self.#busy = false;
        // A consumer that stopped early leaves the rest of the NAR on the wire.
        if (!complete) self.#fail(new ServeProtocolError(self.machine, `the NAR of ${path} was not read to its end`));
      }
    })();
  }

  /** ImportPaths: a `nix-store --export` stream (references first); the peer checks no signature. */
  importPaths(exportStream: ByteSource): Promise<void> {
    return this.#run(async () => {
      await this.#send(new ServeFrame().num(ServeCommand.ImportPaths).bytes());
      for await (const chunk of exportStream) await this.#send(chunk);
      const ack = await this.reader.u64('import acknowledgement');
      if (ack !== 1) throw new ServeProtocolError(this.machine, `import answered ${ack}`);
    });
  }

  /** Whether the peer takes AddToStoreNar (2.5 and later). */
  get canAddToStoreNar(): boolean {
    return this.minor >= 5;
  }

  /**
   * AddToStoreNar: one path with its metadata, then exactly `narSize` NAR
   * bytes. The peer checks the NAR against `narHash` before it registers the path.
   */
  addToStoreNar(info: AddToStoreInfo, nar: ByteSource): Promise<void> {
    return this.#run(async () => {
      if (!this.canAddToStoreNar) throw new ServeProtocolError(this.machine, `AddToStoreNar needs protocol 2.5 (the peer speaks 0x${this.remoteVersion.toString(16)})`);
      const f = new ServeFrame()
        .num(ServeCommand.AddToStoreNar)
        .str(info.path)
        .str(info.deriver ?? '')
        .str(info.narHash.format('base16', false))
        .strs([...info.references].sort())
        .num(info.registrationTime ?? 0)
        .num(info.narSize)
        .num(info.ultimate ?? false)
        .strs([...(info.sigs ?? [])].sort())
        .str(info.ca ?? '');
      await this.#send(f.bytes());
      let sent = 0;
      for await (const chunk of nar) {
        sent += chunk.length;
        if (sent > info.narSize) throw new ServeProtocolError(this.machine, `the NAR of ${info.path} is longer than its ${info.narSize} bytes`);
        await this.#send(chunk);
      }
      if (sent !== info.narSize) throw new ServeProtocolError(this.machine, `the NAR of ${info.path} is ${sent} bytes, not ${info.narSize}`);
      const ack = await this.reader.u64('import acknowledgement');
      if (ack !== 1) throw new ServeProtocolError(this.machine, `AddToStoreNar answered ${ack}`);
    });
  }

  /**
   * BuildDerivation of a basic derivation (no input derivations: their
   * outputs are among `inputSrcs`, valid on the peer). The build's log is
   * the peer's stderr, passed to `onLog` until the result is in.
   */
  buildDerivation(drvPath: string, drv: Derivation, settings: ServeBuildSettings, onLog: (chunk: Buffer) => void): Promise<ServeBuildResult> {
    return this.#run(async () => {
      const f = buildDerivationRequest(drvPath, drv, settings);
      this.#logSink = onLog;
      try {
        await this.#send(f.bytes());
        const status = await this.reader.u64('build status');
        const errorMsg = await this.#str(MAX_TEXT, 'error message');
        const timesBuilt = await this.reader.u64('times built');
        const isNonDeterministic = (await this.reader.u64('non-determinism')) !== 0;
        const startTime = await this.reader.u64('start time');
        const stopTime = await this.reader.u64('stop time');
        const builtOutputs = new Map<string, string>();
        // Nix 2.8 sends them to every client (its version check is misplaced); older peers never do.
        if (protocolMinor(this.remoteVersion) >= 6) {
          const n = await this.#count('built outputs');
          for (let i = 0; i < n; i++) builtOutputs.set(await this.#str(MAX_PATH, 'output id'), await this.#str(MAX_TEXT, 'realisation'));
        }
        // The log went to stderr before the result to stdout, but the two pipes are read
        // independently: one more round trip lets the log's tail arrive before the sink goes.
        await this.#send(new ServeFrame().num(ServeCommand.QueryValidPaths).num(false).num(false).strs([]).bytes());
        await this.#paths('valid paths');
        await new Promise<void>((r) => setImmediate(r));
        return { status, errorMsg, timesBuilt, isNonDeterministic, startTime, stopTime, builtOutputs };
      } finally {
        this.#logSink = null;
      }
    });
  }

  /** Ends the session: the peer sees end of input and exits (a running build is interrupted). */
  close(): void {
    this.#fail(new ServeConnectionError(this.machine, 'closed'));
    this.proc.stdin.end();
  }
}
