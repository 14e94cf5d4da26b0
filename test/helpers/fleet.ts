import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type pg from 'pg';
import { runCli, startCli } from './cli.ts';

/**
 * Pieces for end-to-end tests of a real `hydrant serve` runner with real
 * `hydrant builder` processes, each builder with its own private store.
 */

export type CliProcess = ReturnType<typeof startCli>;

export interface RunnerProcess {
  readonly proc: CliProcess;
  /** The runner's gRPC port. */
  readonly port: number;
  /** A file holding a valid builder token. */
  readonly tokenFile: string;
  readonly token: string;
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
  writeFileSync(
    config,
    [
      `dbUrl = "${dbUrl}"`,
      `hydraDataDir = "${dir}"`,
      `tokenPaths = ["${tokenFile}"]`,
      'grpcListen = "127.0.0.1:0"',
      'httpListen = "127.0.0.1:0"',
      `rootsDir = "${join(dir, 'roots')}"`,
      'shutdownGraceInS = 2',
      extra,
      '',
    ].join('\n'),
  );
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

/** Waits until the runner has logged the join of every machine in `ids`. */
export async function joined(runner: CliProcess, ids: readonly string[], ms = 30_000): Promise<void> {
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
export function processesWithArg(arg: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.split('\0').includes(arg)) pids.push(Number(name));
  }
  return pids;
}

/**
 * A TCP proxy from a local port to `targetPort`: builders dial the proxy.
 * `cut()` destroys every connection open through it, as a network failure
 * seen by both ends would; `cutBuilderSide()` destroys only the dialling
 * side and leaves the runner's side open and silent, as when a builder sees
 * its connection fail first (a NAT or firewall drop) and the runner has not
 * noticed yet. New connections still get through either way.
 */
export class TcpProxy {
  readonly #pairs = new Set<{ client: Socket; upstream: Socket }>();
  /** Runner-side sockets left open by cutBuilderSide(), closed by close(). */
  readonly #stranded = new Set<Socket>();
  /** Connections accepted so far. */
  accepted = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    /** Where new connections go (change it to follow a restarted runner). */
    public target: number,
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    let self!: TcpProxy;
    const server = createServer((client) => {
      self.accepted++;
      const upstream = connect(self.target, '127.0.0.1');
      const pair = { client, upstream };
      self.#pairs.add(pair);
      const end = (): void => {
        self.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end);
      upstream.on('error', end);
      client.on('close', end);
      upstream.on('close', end);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy has no port');
    self = new TcpProxy(server, address.port, targetPort);
    return self;
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

  close(): Promise<void> {
    this.cut();
    for (const s of this.#stranded) s.destroy();
    this.#stranded.clear();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
