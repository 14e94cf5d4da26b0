/**
 * An `ssh://` substituter (seed 004's ssh substituter, Nix's legacy SSH
 * store): a `nix-store --serve` peer reached with OpenSSH, asked for path
 * infos (QueryPathInfos, the look-ups of one tick batched into one request)
 * and NARs (DumpStorePath) over one connection kept for the runner's
 * lifetime and reopened when it breaks. What the peer says is not trusted:
 * its NARs are checked against the NarHash/NarSize it announced before
 * anything is imported, and its paths need a signature by a trusted key
 * unless the URI says `?trusted=1` (docs/SUBSTITUTION.md "ssh:// serve peers").
 *
 *     ssh://[user@]host[:port]?ssh-key=PATH&base64-ssh-public-host-key=B64&trusted=1&compress=1&remote-store=URI
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, ServeConnectionError, ServeProtocolError, SshHostKeyError } from '../errors/index.ts';
import { parseHash } from '../nix/hash.ts';
import type { NarInfo } from '../nix/narinfo.ts';
import { ServeConnection } from '../nix/serve-protocol.ts';
import type { ServePathInfo } from '../nix/serve-wire.ts';
import { parseStorePath } from '../nix/store-path.ts';
import { Batcher } from '../util/batcher.ts';
import { storeBool } from './store-uri.ts';

/** Hydra's and Nix's ssh options: no X11 or agent forwarding, never prompt, 60 s to connect, TCP keepalives. */
const SSH_OPTIONS = ['-x', '-a', '-oBatchMode=yes', '-oConnectTimeout=60', '-oTCPKeepAlive=yes'] as const;

export interface ServeUri {
  /** `user@host` or `host`. */
  destination: string;
  host: string;
  port: number | null;
  sshKey: string | null;
  /** The host's public key line (`ssh-ed25519 AAAA…`), decoded from base64-ssh-public-host-key. */
  hostKey: string | null;
  trusted: boolean;
  compress: boolean;
  remoteStore: string | null;
}

const KNOWN = new Set(['ssh-key', 'base64-ssh-public-host-key', 'trusted', 'compress', 'remote-store', 'priority', 'want-mass-query', 'max-connections']);


export function parseServeUri(uri: string): ServeUri {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new ConfigError(`substituter '${uri}' is not an ssh:// URI`);
  }
  if (u.protocol !== 'ssh:' || !u.hostname || u.pathname.replace(/^\/+/, '') !== '') throw new ConfigError(`substituter '${uri}' is not ssh://[user@]host[:port][?…]`);
  for (const k of u.searchParams.keys()) if (!KNOWN.has(k)) throw new ConfigError(`substituter '${uri}': unknown parameter '${k}'`);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const user = decodeURIComponent(u.username);
  // The destination after `--` on ssh's command line; a leading '-' could still be read as an option by the remote shell's ssh.
  if (host.startsWith('-') || user.startsWith('-')) throw new ConfigError(`substituter '${uri}': a host or user may not begin with '-'`);
  // Nix's boolean values (true/yes/1, false/no/0), the same for every substituter kind; anything else is refused.
  const bool = (k: string): boolean => {
    const v = u.searchParams.get(k);
    if (v === null) return false;
    const b = storeBool(v);
    if (b === undefined) throw new ConfigError(`substituter '${uri}': parameter '${k}': '${v}' is not a boolean (true/false, 1/0)`);
    return b;
  };
  const b64 = u.searchParams.get('base64-ssh-public-host-key');
  const hostKey = b64 ? Buffer.from(b64, 'base64').toString('utf8').trim() : null;
  if (hostKey !== null && !/^[\w@.-]+ [A-Za-z0-9+/=]+( [^\n]*)?$/.test(hostKey)) throw new ConfigError(`substituter '${uri}': base64-ssh-public-host-key is not one public key line`);
  return {
    destination: user ? `${user}@${host}` : host,
    host,
    port: u.port ? Number(u.port) : null,
    sshKey: u.searchParams.get('ssh-key'),
    hostKey,
    trusted: bool('trusted'),
    compress: bool('compress'),
    remoteStore: u.searchParams.get('remote-store'),
  };
}

/** The ssh command line (without the program) for a serve peer; `knownHosts` holds its host key when the URI gives one. */
export function serveSshArgs(s: ServeUri, knownHosts: string | null): string[] {
  const args: string[] = [];
  if (s.sshKey) args.push('-i', s.sshKey);
  if (knownHosts) args.push(`-oUserKnownHostsFile=${knownHosts}`);
  if (s.port !== null) args.push('-p', String(s.port));
  if (s.compress) args.push('-C');
  args.push(...SSH_OPTIONS, '--', s.destination, 'nix-store', '--serve');
  if (s.remoteStore) args.push('--store', `'${s.remoteStore.replace(/'/g, `'\\''`)}'`);
  return args;
}

/** A serve peer's path info as the narinfo the Substituter checks (URL and compression name the DumpStorePath). */
export function servedNarInfo(i: ServePathInfo): NarInfo {
  const info: NarInfo = {
    storePath: i.path,
    url: `dump:${i.path}`,
    compression: 'none',
    narHash: parseHash(i.narHash),
    narSize: i.narSize,
    references: i.references.map((r) => parseStorePath(r).baseName),
    sigs: i.sigs,
  };
  if (i.deriver) info.deriver = parseStorePath(i.deriver).baseName;
  if (i.ca) info.ca = i.ca;
  return info;
}

/** A SubstituteSource (substitute-source.ts; structurally, that module imports this one). */
export class ServeSource {
  readonly trusted: boolean;
  private conn: ServeConnection | null = null;
  private readonly children = new Map<ServeConnection, ChildProcess>();
  private opening: Promise<ServeConnection> | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private tmpDir: string | null = null;
  private closed = false;
  private readonly infos: Batcher<string, ServePathInfo | null>;
  /** Connections opened so far (one ssh login each). */
  connectionsOpened = 0;

  constructor(
    readonly url: string,
    private readonly uri: ServeUri,
  ) {
    this.trusted = uri.trusted;
    // One QueryPathInfos for the look-ups of a tick (the Substituter sends a closure level's at once).
    this.infos = new Batcher(async (paths) => {
      const got = await this.exclusive((c) => c.queryPathInfos(paths));
      return new Map(got.map((i) => [i.path, i]));
    }, null, 1000);
  }

  async narInfo(storePath: string): Promise<NarInfo | null> {
    const i = await this.infos.load(storePath);
    return i ? servedNarInfo(i) : null;
  }

  nar(info: NarInfo): Promise<Buffer> {
    return this.exclusive(async (c) => {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const b of c.dumpStorePath(info.storePath)) {
        size += b.length;
        // The peer announced the size: more is refused now, not after buffering it all.
        if (size > info.narSize) throw new ServeProtocolError(this.url, `the NAR of ${info.storePath} is longer than the ${info.narSize} bytes announced`);
        chunks.push(b);
      }
      return Buffer.concat(chunks);
    });
  }

  /** One command at a time on the connection (the protocol has no multiplexing). */
  private exclusive<T>(fn: (c: ServeConnection) => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      const c = await this.connection();
      try {
        return await fn(c);
      } catch (e) {
        if (c.broken) this.drop(c);
        throw e;
      }
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private async connection(): Promise<ServeConnection> {
    if (this.closed) throw new ServeConnectionError(this.url, 'closed');
    if (this.conn && !this.conn.broken) return this.conn;
    if (this.conn) this.drop(this.conn);
    this.opening ??= this.open().finally(() => (this.opening = null));
    return (this.conn = await this.opening);
  }

  private async knownHosts(): Promise<string | null> {
    if (!this.uri.hostKey) return null;
    if (!this.tmpDir) {
      this.tmpDir = await mkdtemp(join(tmpdir(), 'hydrant-ssh-subst-'));
      const host = this.uri.port !== null && this.uri.port !== 22 ? `[${this.uri.host}]:${this.uri.port}` : this.uri.host;
      await writeFile(join(this.tmpDir, 'known_hosts'), `${host} ${this.uri.hostKey}\n`, { mode: 0o600 });
      await chmod(join(this.tmpDir, 'known_hosts'), 0o600);
    }
    return join(this.tmpDir, 'known_hosts');
  }

  private async open(): Promise<ServeConnection> {
    const child = spawn('ssh', serveSshArgs(this.uri, await this.knownHosts()), { stdio: ['pipe', 'pipe', 'pipe'] });
    this.connectionsOpened++;
    try {
      const c = await ServeConnection.open(child, this.url);
      this.children.set(c, child);
      return c;
    } catch (e) {
      child.kill('SIGKILL');
      if (e instanceof ServeConnectionError && /Host key verification failed/.test(e.stderr)) throw new SshHostKeyError(this.url);
      throw e;
    }
  }

  private drop(c: ServeConnection): void {
    c.close();
    const child = this.children.get(c);
    this.children.delete(c);
    // ssh ends with the remote nix-store; a peer that hangs is not waited for.
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    if (this.conn === c) this.conn = null;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.conn) this.drop(this.conn);
    if (this.tmpDir) await rm(this.tmpDir, { recursive: true, force: true });
  }
}

export function openServeSource(url: string): ServeSource {
  return new ServeSource(url, parseServeUri(url));
}
