import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import type { NixStoreHandle } from './private-store.ts';
import { NixCommandError } from '../errors/index.ts';
import type { Derivation } from './derivation.ts';
import {
  buildDerivationRequest, SERVE_CLIENT_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2, ServeCommand, ServeFrame,
  type ServeBuildResult, type ServeBuildSettings, type ServePathInfo,
} from './serve-wire.ts';

/**
 * Store queries over one long-lived `nix-store --serve` process (Nix's
 * serve protocol, the one Hydra's queue runner speaks to its machines):
 * a query costs a round trip instead of a Nix process start-up (30–45 ms of
 * CPU each, which dominated the per-step cost). Queries, imports of
 * already verified export streams, and builds of basic derivations
 * (BuildDerivation, as Hydra's runner builds on its machines).
 */

export type { ServeBuildResult, ServeBuildSettings };

/** Bytes of an import held back before they are written to the serve process at once. */
const IMPORT_WRITE_BYTES = 64 * 1024;

/**
 * Thrown by a Cursor that ran out of bytes: the reply is not all there yet.
 * One shared plain object, not an Error: every request throws it at least
 * once (its first parse finds nothing yet), and an Error would capture a
 * stack trace each time that nobody reads.
 */
const NEED_MORE: unique symbol = Symbol('need more bytes');

/** Reads one reply's words and strings synchronously from what has arrived. */
class Cursor {
  pos = 0;
  constructor(private readonly buf: Buffer) {}

  private take(n: number): Buffer {
    if (this.buf.length - this.pos < n) throw NEED_MORE;
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  num(): number {
    return Number(this.take(8).readBigUInt64LE(0));
  }

  str(): string {
    const n = this.num();
    return this.take(n + (n % 8 ? 8 - (n % 8) : 0)).toString('utf8', 0, n);
  }

  strs(): string[] {
    const n = this.num();
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(this.str());
    return out;
  }
}

/**
 * Collects the process's stdout and parses each reply once all of it has
 * arrived: a reply is read in one synchronous pass (a path-info reply for a
 * large closure has thousands of fields; awaiting each cost more than Nix
 * took to answer).
 */
class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  closed = false;

  constructor(stream: NodeJS.ReadableStream) {
    stream.on('data', (b: Buffer) => {
      this.buf = this.buf.length === 0 ? b : Buffer.concat([this.buf, b]);
      this.wake?.();
    });
    stream.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  /** Runs `parse` over the buffered bytes, again as more arrive, until it has the whole reply. */
  async read<T>(parse: (c: Cursor) => T): Promise<T> {
    for (;;) {
      const c = new Cursor(this.buf);
      try {
        const value = parse(c);
        this.buf = this.buf.subarray(c.pos);
        return value;
      } catch (e) {
        if (e !== NEED_MORE) throw e;
      }
      if (this.closed) throw new Error('the serve process ended');
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }
}

/** What the serve protocol reports about a valid path (the local store has nothing to download). */
export type ServedPathInfo = Omit<ServePathInfo, 'downloadSize'>;

export class ServeSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly reader: FrameReader;
  private readonly ready: Promise<void>;
  private stderr = '';
  /** Where stderr goes while a build runs on this session (its log). */
  private onStderr: ((chunk: Buffer) => void) | null = null;
  private ending = false;

  constructor(store: NixStoreHandle) {
    this.child = store.spawn('nix-store', ['--serve', '--write']);
    this.reader = new FrameReader(this.child.stdout);
    this.child.stdin.on('error', () => {});
    this.child.on('error', () => {});
    this.child.stderr.on('data', (b: Buffer) => {
      if (this.onStderr) this.onStderr(b);
      else this.stderr = (this.stderr + b.toString('utf8')).slice(-2000);
    });
    // An idle session must not keep the process alive; it ends when our stdin closes.
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as { _handle?: { unref?(): void } })._handle?.unref?.();
    this.ready = this.handshake();
    this.ready.catch(() => {});
  }

  /** Whether the session can take no more calls (its process ended, or is ending). */
  get dead(): boolean {
    return this.ending || this.reader.closed;
  }


  private async handshake(): Promise<void> {
    this.child.stdin.write(new ServeFrame().num(SERVE_MAGIC_1).bytes());
    // The magic, then the server's protocol version.
    const [magic] = await this.reader.read((c) => [c.num(), c.num()]);
    if (magic !== SERVE_MAGIC_2) throw new Error('not a Nix serve process');
    this.child.stdin.write(new ServeFrame().num(SERVE_CLIENT_VERSION).bytes());
  }

  private async call<T>(request: ServeFrame, read: () => Promise<T>): Promise<T> {
    try {
      await this.ready;
      this.child.stdin.write(request.bytes());
      return await read();
    } catch (err) {
      this.close();
      throw new NixCommandError(['nix-store', '--serve'], null, `${(err as Error).message}: ${this.stderr.trim()}`);
    }
  }

  /** The subset of `paths` that are valid. */
  queryValid(paths: readonly string[]): Promise<string[]> {
    return this.call(new ServeFrame().num(ServeCommand.QueryValidPaths).num(0).num(0).strs(paths), () => this.reader.read((c) => c.strs()));
  }

  /** Infos of the valid ones among `paths` (invalid ones are left out). */
  queryPathInfos(paths: readonly string[]): Promise<ServedPathInfo[]> {
    return this.call(new ServeFrame().num(ServeCommand.QueryPathInfos).strs(paths), () =>
      this.reader.read((c) => {
        const out: ServedPathInfo[] = [];
        for (;;) {
          const path = c.str();
          if (path === '') return out;
          const deriver = c.str();
          const references = c.strs();
          c.num(); // download size
          const narSize = c.num();
          const narHash = c.str();
          const ca = c.str();
          const sigs = c.strs();
          out.push({ path, deriver: deriver || null, references, narSize, narHash, ca: ca || null, sigs });
        }
      }),
    );
  }

  /** The closure of valid `paths` (with the valid outputs of derivations in it when `includeOutputs`). */
  queryClosure(paths: readonly string[], includeOutputs: boolean): Promise<string[]> {
    return this.call(new ServeFrame().num(ServeCommand.QueryClosure).num(includeOutputs ? 1 : 0).strs(paths), () => this.reader.read((c) => c.strs()));
  }

  /**
   * Imports a `nix-store --export` stream (paths the caller has verified:
   * no signature is checked), as `nix-store --import` would.
   */
  async importExport(source: AsyncIterable<Uint8Array>): Promise<void> {
    try {
      await this.ready;
      const stdin = this.child.stdin;
      // The command and the stream's chunks (a small output's export comes in
      // several) go out corked, in one write per IMPORT_WRITE_BYTES: each
      // pipe write is a system call and a wake-up of the Nix process.
      stdin.cork();
      let corked = true;
      try {
        stdin.write(new ServeFrame().num(ServeCommand.ImportPaths).bytes());
        let held = 0;
        for await (const chunk of source) {
          if (this.dead) break;
          // Past the stream's high-water mark while corked: what is held stays under IMPORT_WRITE_BYTES and a chunk.
          stdin.write(chunk);
          held += chunk.length;
          if (held < IMPORT_WRITE_BYTES) continue;
          stdin.uncork();
          corked = false;
          held = 0;
          // A corked stream never drains: wait for the drain only once uncorked.
          if (stdin.writableNeedDrain) await new Promise<void>((r) => stdin.once('drain', () => r()));
          stdin.cork();
          corked = true;
        }
      } finally {
        if (corked) stdin.uncork();
      }
      if ((await this.reader.read((c) => c.num())) !== 1) throw new Error('the import was not acknowledged');
    } catch (err) {
      this.close();
      throw new NixCommandError(['nix-store', '--serve', '--write'], null, `import failed: ${(err as Error).message}: ${this.stderr.trim()}`);
    }
  }

  /**
   * Builds a basic derivation whose inputs (`drv.inputSrcs`: sources and
   * input derivations' outputs) are valid in the store; the build's log is
   * the session's stderr meanwhile. Rejects if the session dies (see stop).
   */
  async buildDerivation(drvPath: string, drv: Derivation, options: ServeBuildSettings, onLog: (chunk: Buffer) => void): Promise<ServeBuildResult> {
    const f = buildDerivationRequest(drvPath, drv, options);
    this.onStderr = onLog;
    try {
      return await this.call(f, async () => {
        const result = await this.reader.read((c): ServeBuildResult => {
          const status = c.num();
          const errorMsg = c.str();
          const timesBuilt = c.num();
          const isNonDeterministic = c.num() !== 0;
          const startTime = c.num();
          const stopTime = c.num();
          // Realisations of the outputs (id, JSON): the local Nix is at 2.6 or later.
          const builtOutputs = new Map<string, string>();
          for (let n = c.num(); n > 0; n--) builtOutputs.set(c.str(), c.str());
          return { status, errorMsg, timesBuilt, isNonDeterministic, startTime, stopTime, builtOutputs };
        });
        // The process wrote the log to stderr before the result to stdout: its last
        // chunk is read in the same poll of the event loop, before an immediate runs.
        await new Promise<void>((r) => setImmediate(r));
        return result;
      });
    } finally {
      this.onStderr = null;
    }
  }

  /**
   * Stops what the session runs: SIGINT first, on which Nix kills the
   * build's process group itself (a SIGKILLed nix-store would leave the
   * builder running), then SIGKILL if it lingers. The session is dead after.
   */
  stop(graceMs: number): void {
    this.ending = true;
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGINT');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    t.unref();
    this.child.once('close', () => clearTimeout(t));
  }

  close(): void {
    this.ending = true;
    this.child.stdin.end();
  }
}

/** Up to `size` sessions on one store; a caller has a session to itself for its queries. */
export class ServePool {
  private readonly idle: ServeSession[] = [];
  private open = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly store: NixStoreHandle,
    private readonly size = 4,
  ) {}

  async use<T>(fn: (s: ServeSession) => Promise<T>): Promise<T> {
    while (this.idle.length === 0 && this.open >= this.size) await new Promise<void>((r) => this.waiting.push(r));
    let s = this.idle.pop();
    while (s?.dead) {
      this.open--; // ended while idle
      s = this.idle.pop();
    }
    if (!s) {
      this.open++;
      s = new ServeSession(this.store);
    }
    try {
      return await fn(s);
    } finally {
      if (s.dead) this.open--;
      else this.idle.push(s);
      this.waiting.shift()?.();
    }
  }
}

const pools = new WeakMap<NixStoreHandle, ServePool>();

/** The query sessions of a store. */
export function servePool(store: NixStoreHandle): ServePool {
  let p = pools.get(store);
  if (!p) pools.set(store, (p = new ServePool(store)));
  return p;
}
