import { execFileSync } from 'node:child_process';
import { pidsWithArg } from '../../src/provision/process-list.ts';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, expect } from 'vitest';
import { runCli, startCli } from './cli.ts';
import { useTestDatabase, type TestDatabase } from './db.ts';

/**
 * Pieces for end-to-end tests of a real `hydrant serve` runner with real
 * `hydrant builder` processes, each builder with its own private store.
 */

export type CliProcess = ReturnType<typeof startCli>;

/** What an end-to-end describe block runs on (see useFleet). */
export interface Fleet {
  readonly db: TestDatabase;
  readonly dir: string;
  /** Processes to SIGKILL after the block's tests. */
  readonly procs: CliProcess[];
  /**
   * Processes to stop gracefully after the block's tests, before the others
   * are SIGKILLed: SIGTERM, then their exit awaited (a runner stopping closes
   * its caches: an S3 cache's staging directory goes).
   */
  readonly graceful: CliProcess[];
  /** Proxies to close after the block's tests. */
  readonly proxies: ForwardingProxy[];
}

/**
 * What an end-to-end describe block runs on: a fresh database, a directory
 * of its own (`hydrant-e2e-<name>-…`), and the processes and proxies it
 * starts. After its tests (and after the block's own afterAll hooks) the
 * graceful processes are stopped, the others SIGKILLed, the proxies closed,
 * then `cleanup` runs, then the database is dropped.
 */
export function useFleet(name: string, cleanup?: () => unknown): Fleet {
  const fleet: Fleet = { db: useTestDatabase(), dir: mkdtempSync(join(tmpdir(), `hydrant-e2e-${name}-`)), procs: [], graceful: [], proxies: [] };
  afterAll(async () => {
    for (const p of fleet.graceful) {
      p.child.kill('SIGTERM');
      await p.exited;
    }
    for (const p of fleet.procs) p.child.kill('SIGKILL');
    for (const p of fleet.proxies) await p.close();
    await cleanup?.();
  });
  return fleet;
}

/** Builder options for a builder that is to dial again quickly after a lost connection. */
export const QUICK_RECONNECT = 'reconnectMinMs = 200\nreconnectMaxMs = 1000';

/**
 * Starts a runner with `config` TOML lines and one builder, b1, that dials
 * it through a proxy (from `startProxy`, e.g. `TcpProxy.start`), with
 * `builderConfig` lines; resolves once b1 has joined.
 */
export async function startRunnerWithProxiedBuilder<P extends ForwardingProxy>(
  fleet: Fleet,
  config: string,
  startProxy: (target: number) => Promise<P>,
  builderConfig = QUICK_RECONNECT,
): Promise<{ runner: RunnerProcess; proxy: P; builder: CliProcess }> {
  const runner = await startRunner(fleet.dir, fleet.db.url, config);
  fleet.procs.push(runner.proc);
  const proxy = await startProxy(runner.port);
  fleet.proxies.push(proxy);
  const builder = startBuilder(fleet.dir, `127.0.0.1:${proxy.port}`, runner.tokenFile, 'b1', builderConfig);
  fleet.procs.push(builder);
  await joined(runner.proc, ['b1']);
  return { runner, proxy, builder };
}

export interface RunnerProcess {
  readonly proc: CliProcess;
  /** The runner's gRPC port. */
  readonly port: number;
  /** A file holding a valid builder token. */
  readonly tokenFile: string;
  readonly token: string;
}

/**
 * A runner's configuration: its database, Hydra data directory, builder
 * token file and GC roots; gRPC and HTTP on free loopback ports; a 2 s
 * shutdown grace; then the `extra` TOML lines.
 */
export function runnerToml(a: { dbUrl: string; hydraDataDir: string; tokenFile: string; rootsDir: string }, extra = ''): string {
  return [
    `dbUrl = "${a.dbUrl}"`,
    `hydraDataDir = "${a.hydraDataDir}"`,
    `tokenPaths = ["${a.tokenFile}"]`,
    'grpcListen = "127.0.0.1:0"',
    'httpListen = "127.0.0.1:0"',
    `rootsDir = "${a.rootsDir}"`,
    'shutdownGraceInS = 2',
    extra,
    '',
  ].join('\n');
}

/**
 * Starts `hydrant serve` on `dbUrl` with `hydraDataDir = dir`, GC roots
 * under `dir/roots`, a builder token (fresh unless given), gRPC and HTTP on
 * free ports, and `extra` TOML lines.
 */
export async function startRunner(
  dir: string,
  dbUrl: string,
  extra = '',
  { env = {}, token = randomBytes(24).toString('hex') }: { env?: NodeJS.ProcessEnv; token?: string } = {},
): Promise<RunnerProcess> {
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, token);
  const config = join(dir, 'runner.toml');
  writeFileSync(config, runnerToml({ dbUrl, hydraDataDir: dir, tokenFile, rootsDir: join(dir, 'roots') }, extra));
  const proc = startCli(['serve', '--config', config], env);
  const listening = await proc.waitFor(/"port":(\d+),"msg":"builder protocol listening"/, 60_000);
  return { proc, port: Number(/"port":(\d+)/.exec(listening)![1]), tokenFile, token };
}

/**
 * Starts `hydrant builder` with a private store under `dir/<id>` and `extra` TOML lines. One job at
 * a time unless `extra` sets maxJobs (the default is the machine's cores): the tests' schedules
 * count on it.
 */
export function startBuilder(dir: string, server: string, tokenFile: string, id: string, extra = ''): CliProcess {
  const config = join(dir, `${id}.toml`);
  writeFileSync(
    config,
    [`server = "${server}"`, `tokenFile = "${tokenFile}"`, `machineId = "${id}"`, `storeDir = "${join(dir, id)}"`, /^maxJobs\b/m.test(extra) ? '' : 'maxJobs = 1', extra, ''].join('\n'),
  );
  return startCli(['builder', '--config', config]);
}

/**
 * Waits until the runner has logged the join of every machine in `ids`. The
 * bound is for a hang: a builder process starting on a loaded machine (CI's two
 * cores running the whole suite) took over 30 s to join.
 */
export async function joined(runner: CliProcess, ids: readonly string[], ms = 90_000): Promise<void> {
  for (const id of ids) {
    await runner.waitFor(new RegExp(`"machine":"${id}"[^\\n]*"msg":"builder joined"|"msg":"builder joined"[^\\n]*"machine":"${id}"`), ms);
  }
}

/** `hydrant submit` of `file` (optionally only `attrs`); returns job name → build id. */
export async function submit(dbUrl: string, file: string, jobset: string, attrs: readonly string[] = []): Promise<Record<string, number>> {
  const r = await runCli(['submit', '--db-url', dbUrl, '--project', 'e2e', '--jobset', jobset, '--create', '--file', file, ...attrs.flatMap((a) => ['--attr', a])]);
  if (r.code !== 0) throw new Error(`hydrant submit failed (${r.code}): ${r.stderr}`);
  const ids: Record<string, number> = {};
  for (const m of r.stdout.matchAll(/queued build (\d+) (\S+)/g)) ids[m[2]!] = Number(m[1]);
  return ids;
}

export interface StepRow {
  build: number;
  stepnr: number;
  drvpath: string;
  busy: number;
  status: number | null;
  machine: string;
  errormsg: string | null;
}

export async function stepRows(pool: pg.Pool, build: number): Promise<StepRow[]> {
  return (await pool.query<StepRow>('select build, stepnr, drvpath, busy, status, machine, errormsg from buildsteps where build = $1 order by stepnr', [build])).rows;
}

export async function buildRow(pool: pg.Pool, id: number): Promise<{ finished: number; buildstatus: number | null; drvpath: string }> {
  return (await pool.query('select finished, buildstatus, drvpath from builds where id = $1', [id])).rows[0];
}

export async function busySteps(pool: pg.Pool): Promise<number> {
  return (await pool.query('select count(*)::int n from buildsteps where busy != 0')).rows[0].n as number;
}

/** The attempts at build `id`: [machine, status, busy] of each of its steps, in order. */
export async function attempts(pool: pg.Pool, id: number): Promise<[string, number | null, number][]> {
  return (await stepRows(pool, id)).map((r) => [r.machine, r.status, r.busy]);
}

/** Build `id` succeeded after exactly `expected` attempts (as `attempts` gives them), and no step of any build is left busy. */
export async function expectSucceeded(pool: pg.Pool, id: number, expected: readonly (readonly [string, number, number])[]): Promise<void> {
  expect((await buildRow(pool, id)).buildstatus).toBe(0);
  expect(await attempts(pool, id)).toEqual(expected);
  expect(await busySteps(pool)).toBe(0);
}

/**
 * The stored build log of `drvPath` under `hydraDataDir`, as Hydra's web
 * interface finds it: plain, or compressed (`.bz2`, `.zst`). Null if none.
 */
export function readBuildLog(hydraDataDir: string, drvPath: string): Buffer | null {
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1);
  const file = join(hydraDataDir, 'build-logs', base.slice(0, 2), base.slice(2));
  if (existsSync(file)) return readFileSync(file);
  if (existsSync(`${file}.bz2`)) return execFileSync('bzip2', ['-dc', `${file}.bz2`], { maxBuffer: 1 << 30 });
  if (existsSync(`${file}.zst`)) return execFileSync('zstd', ['-dcq', `${file}.zst`], { maxBuffer: 1 << 30 });
  return null;
}

/** Pids of processes whose argument list contains `arg` as one whole argument. */
export const processesWithArg = pidsWithArg;

/**
 * A TCP proxy on a free local port: each connection it accepts gets a
 * connection of its own to `target`, and the subclass relays between the two.
 */
export abstract class ForwardingProxy {
  #server: Server | undefined;
  /** The proxy's port: builders dial it. */
  port = 0;

  protected constructor(
    /** Where new connections go (change it to follow a restarted runner). */
    public target: number,
  ) {}

  /** Starts listening; resolves with the proxy once it has its port. */
  protected async listen(): Promise<this> {
    const server = createServer((client) => this.relay(client, connect(this.target, '127.0.0.1')));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy has no port');
    this.#server = server;
    this.port = address.port;
    return this;
  }

  /** Relays between an accepted connection and its own connection to the target. */
  protected abstract relay(client: Socket, upstream: Socket): void;

  /** Destroys what the proxy still holds open. */
  protected abstract destroyAll(): void;

  close(): Promise<void> {
    this.destroyAll();
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }
}

/**
 * A ForwardingProxy whose subclass relays bytes its own way, with the
 * bookkeeping shared: `pair` keeps both sockets, ignores their errors, and
 * ends both when either closes; close() destroys what is still open.
 */
export abstract class PairedProxy extends ForwardingProxy {
  readonly #sockets = new Set<Socket>();

  protected pair(client: Socket, upstream: Socket): void {
    for (const s of [client, upstream]) {
      this.#sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.#sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  }

  protected destroyAll(): void {
    for (const s of this.#sockets) s.destroy();
  }
}

/**
 * A TCP proxy from a local port to `targetPort`: builders dial the proxy.
 * `cut()` destroys every connection open through it, as a network failure
 * seen by both ends would; `cutBuilderSide()` destroys only the dialling
 * side and leaves the runner's side open and silent, as when a builder sees
 * its connection fail first (a NAT or firewall drop) and the runner has not
 * noticed yet. New connections still get through either way.
 */
export class TcpProxy extends ForwardingProxy {
  readonly #pairs = new Set<{ client: Socket; upstream: Socket }>();
  /** Runner-side sockets left open by cutBuilderSide(), closed by close(). */
  readonly #stranded = new Set<Socket>();
  /** Connections accepted so far. */
  accepted = 0;

  static start(targetPort: number): Promise<TcpProxy> {
    return new TcpProxy(targetPort).listen();
  }

  protected relay(client: Socket, upstream: Socket): void {
    this.accepted++;
    const pair = { client, upstream };
    this.#pairs.add(pair);
    const end = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Destroys every open connection; returns how many were cut. */
  cut(): number {
    const n = this.#pairs.size;
    for (const { client, upstream } of [...this.#pairs]) {
      client.destroy();
      upstream.destroy();
    }
    this.#pairs.clear();
    return n;
  }

  /** Destroys the builder's side of every open connection; the runner's side stays open, and nothing more reaches it. */
  cutBuilderSide(): number {
    const n = this.#pairs.size;
    for (const { client, upstream } of [...this.#pairs]) {
      upstream.unpipe(client);
      client.unpipe(upstream);
      upstream.removeAllListeners('close');
      upstream.removeAllListeners('error');
      upstream.on('error', () => {});
      upstream.pause();
      this.#stranded.add(upstream);
      client.removeAllListeners('close');
      client.removeAllListeners('error');
      client.on('error', () => {});
      client.destroy();
    }
    this.#pairs.clear();
    return n;
  }

  protected destroyAll(): void {
    this.cut();
    for (const s of this.#stranded) s.destroy();
    this.#stranded.clear();
  }
}
