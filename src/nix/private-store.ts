/**
 * Running Nix commands against a builder's OWN Nix store on this machine.
 *
 * A private store is a directory `<dir>/nix` (store in `<dir>/nix/store`,
 * state in `<dir>/nix/var/nix`, the Debian nix-bin layout) that is
 * bind-mounted over `/nix` inside a private mount namespace, so that plain
 * `nix-store`, `nix-instantiate`, `nix path-info`... see it as *the* local
 * store: builds work (a diverted `--store /root` store cannot build without a
 * sandbox, REFERENCE §7) and the host store is neither seen nor touched.
 *
 * What was found on this machine (Debian nix-bin 2.8.0, util-linux 2.38.1, root):
 *
 * - Each command runs in its own namespace:
 *     unshare --mount --propagation private -- /bin/sh -c 'mount --bind "$0" /nix && exec "$@"' <dir>/nix CMD ARGS...
 *   The directory and arguments travel as positional parameters, never through
 *   shell parsing. `unshare` and `sh` both exec, so the spawned pid IS the Nix
 *   command (kill() reaches it) and its exit code is the command's. The mount
 *   disappears with the last process of the namespace: nothing to clean up,
 *   nothing leaks if Hydrant crashes, no long-lived namespace holder to nsenter
 *   into. The overhead is a few milliseconds per command.
 * - Commands in different namespaces share the store safely: Nix's locks
 *   (SQLite db, big-lock, per-path locks) are on the same inodes.
 * - A first Nix command on an empty `<dir>/nix` creates the whole layout by
 *   itself (`nix-store --init` or even `nix-store -q`): store/ (root:nixbld
 *   1775 like the host's), store/.links, var/nix/{db,temproots,gcroots/
 *   {per-user,profiles},profiles/per-user}. We run `nix-store --init` once at
 *   create() and also make profiles/per-user/root and gcroots/per-user/root,
 *   which `nix-env`/`--add-root` would otherwise create lazily.
 * - There is no daemon socket in a private store: NIX_REMOTE is removed from
 *   the environment and `store = local` forced, so a host setting cannot
 *   route commands to the host daemon (and the host store).
 * - Nix's binaries must live outside /nix (Debian: /usr/bin); with the
 *   official installer they are in /nix/store and the bind mount would hide
 *   them, so create() refuses that setup.
 * - The store's files are visible from outside the namespace under
 *   `<dir>/nix/store/...` (realPath()), so NARs can be dumped without entering it.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { NixCommandError, PrivateStoreError } from '../errors/index.ts';
import type { ByteSource } from './nar-reader.ts';
import { nixEnv } from './tools.ts';
import type { RunNixResult } from './tools.ts';

export interface StoreCommandOptions {
  /** stdin: bytes, text or a byte stream (piped, never buffered whole). Default: empty. */
  input?: Buffer | string | ByteSource;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Extra nix.conf lines (come after the defaults, so they win). */
  extraConfig?: string;
}

export interface StoreCommandResult {
  stdout: Buffer;
  stderr: string;
  /** Exit code, or null when killed by a signal. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/** A Nix store commands can be run against: the host's, or a private one. */
export interface NixStoreHandle {
  readonly kind: 'host' | 'private';
  /** Spawns `cmd args` (with the Nix environment) so that it sees this store as /nix. */
  spawn(cmd: string, args: readonly string[], options?: Omit<StoreCommandOptions, 'input'>): ChildProcessWithoutNullStreams;
  /** Runs to completion; never throws for a non-zero exit (see exitCode). */
  run(cmd: string, args: readonly string[], options?: StoreCommandOptions): Promise<StoreCommandResult>;
  /** Runs to completion; throws NixCommandError unless the exit code is 0. */
  runChecked(cmd: string, args: readonly string[], options?: StoreCommandOptions): Promise<RunNixResult>;
  /** Where the files of a store path are visible from this process. */
  realPath(storePath: string): string;
}

function collect(child: ChildProcessWithoutNullStreams, input: StoreCommandOptions['input'], argv: readonly string[]): Promise<StoreCommandResult> {
  return new Promise((resolvePromise, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    // The command may exit without reading all its input: that is its exit code's business.
    child.stdin.on('error', () => {});
    child.on('error', (e) => reject(new NixCommandError(argv, null, String(e))));
    child.on('close', (code, signal) => {
      resolvePromise({ stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8'), exitCode: code, signal });
    });
    if (input === undefined || typeof input === 'string' || Buffer.isBuffer(input)) {
      child.stdin.end(input ?? '');
    } else {
      const src = Readable.from(input, { objectMode: false });
      src.on('error', (e) => {
        // A failing input stream must not let the command succeed on a truncated input.
        child.kill('SIGKILL');
        reject(e);
      });
      src.pipe(child.stdin);
    }
  });
}

abstract class BaseStore implements NixStoreHandle {
  abstract readonly kind: 'host' | 'private';
  protected abstract argv(cmd: string, args: readonly string[]): [string, string[]];
  protected abstract env(options: Omit<StoreCommandOptions, 'input'>): NodeJS.ProcessEnv;
  abstract realPath(storePath: string): string;

  spawn(cmd: string, args: readonly string[], options: Omit<StoreCommandOptions, 'input'> = {}): ChildProcessWithoutNullStreams {
    const [file, argv] = this.argv(cmd, args);
    return spawn(file, argv, { env: this.env(options), cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  }

  run(cmd: string, args: readonly string[], options: StoreCommandOptions = {}): Promise<StoreCommandResult> {
    return collect(this.spawn(cmd, args, options), options.input, [cmd, ...args]);
  }

  async runChecked(cmd: string, args: readonly string[], options: StoreCommandOptions = {}): Promise<RunNixResult> {
    const r = await this.run(cmd, args, options);
    if (r.exitCode !== 0) throw new NixCommandError([cmd, ...args], r.exitCode, r.stderr || `killed by ${r.signal}`);
    return { stdout: r.stdout, stderr: r.stderr };
  }
}

/** The machine's own store, used directly. */
export class HostStore extends BaseStore {
  readonly kind = 'host' as const;
  protected argv(cmd: string, args: readonly string[]): [string, string[]] {
    return [cmd, [...args]];
  }
  protected env(options: Omit<StoreCommandOptions, 'input'>): NodeJS.ProcessEnv {
    return nixEnv(options.extraConfig, options.env);
  }
  realPath(storePath: string): string {
    return storePath;
  }
}

export const hostStore: NixStoreHandle = new HostStore();

const ENTER_SCRIPT = 'mount --bind "$0" /nix && exec "$@"';

export class PrivateStore extends BaseStore {
  readonly kind = 'private' as const;
  /** The directory bind-mounted over /nix (`<dir>/nix`). */
  readonly nixDir: string;

  private constructor(readonly dir: string) {
    super();
    this.nixDir = join(dir, 'nix');
  }

  /** Creates (or reopens) the private store under `dir` and initialises it. */
  static async create(dir: string): Promise<PrivateStore> {
    const abs = resolve(dir);
    for (const tool of ['nix-store', 'nix']) {
      const where = await whichReal(tool);
      if (where === null) throw new PrivateStoreError(abs, `${tool} not found in PATH`);
      if (where === '/nix' || where.startsWith('/nix/')) {
        throw new PrivateStoreError(abs, `${tool} lives in ${where}, which the bind mount over /nix would hide`);
      }
    }
    await mkdir(join(abs, 'nix'), { recursive: true });
    const store = new PrivateStore(await realpath(abs));
    const r = await store.run('nix-store', ['--init']);
    if (r.exitCode !== 0) throw new PrivateStoreError(abs, `cannot initialise (exit ${r.exitCode}): ${r.stderr.trim()}`);
    for (const sub of ['var/nix/profiles/per-user/root', 'var/nix/gcroots/per-user/root']) {
      await mkdir(join(store.nixDir, sub), { recursive: true });
    }
    return store;
  }

  protected argv(cmd: string, args: readonly string[]): [string, string[]] {
    return ['unshare', ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', ENTER_SCRIPT, this.nixDir, cmd, ...args]];
  }

  protected env(options: Omit<StoreCommandOptions, 'input'>): NodeJS.ProcessEnv {
    const base = { ...(options.env ?? process.env) };
    for (const v of ['NIX_REMOTE', 'NIX_STORE_DIR', 'NIX_STORE', 'NIX_STATE_DIR', 'NIX_DB_DIR', 'NIX_LOG_DIR']) delete base[v];
    // No build users: their lock files live under /nix/var, which is private
    // here, so a private store would pick nixbld users that the host's Nix
    // (or another private store) is using, and Nix kills every process of a
    // build user before it starts a build. Builds run as the calling user.
    return nixEnv(['store = local', 'build-users-group =', options.extraConfig ?? ''].filter(Boolean).join('\n'), base);
  }

  realPath(storePath: string): string {
    if (!storePath.startsWith('/nix/')) throw new PrivateStoreError(this.dir, `not a path under /nix: ${storePath}`);
    return join(this.nixDir, storePath.slice('/nix/'.length));
  }
}

async function whichReal(tool: string): Promise<string | null> {
  for (const d of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    try {
      return await realpath(join(d, tool));
    } catch {
      // not in this directory
    }
  }
  return null;
}
