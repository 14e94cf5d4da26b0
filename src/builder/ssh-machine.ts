/**
 * A build machine reached as Hydra's C++ runner reaches one: OpenSSH's
 * client running `nix-store --serve --write` on the machine (or, for
 * `localhost`, a local `nix-store --serve` on the runner's own store),
 * behind the same BuilderPort as the gRPC builders (docs/SSH-MACHINES.md).
 *
 * A step: connect (or reuse an idle connection), send the inputs the
 * machine lacks (QueryValidPaths, then AddToStoreNar or ImportPaths),
 * BuildDerivation with the step's limits (the remote Nix enforces them; its
 * stderr is the build log), then bring the outputs back: QueryPathInfos,
 * the size limit, DumpStorePath, every NAR hashed and checked against what
 * the machine claims before anything is imported. Aborting a step ends its
 * connection, which ends the remote build.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BuilderPort, StepJob, StepOutcome } from '../actors/builder-port.ts';
import { unixNow } from '../actors/builder-port.ts';
import type { MachineSpec } from '../config/machines-file.ts';
import { StepBusy, type StepBusyCode } from '../db/status.ts';
import { NarHashMismatchError, ServeConnectionError, ServeProtocolError, SshHostKeyError, UnexpectedStorePathError } from '../errors/index.ts';
import { basicDerivation } from '../nix/basic-derivation.ts';
import { BuildLogWriter } from '../nix/build-log-writer.ts';
import { buildLogPath } from '../nix/build-logs.ts';
import { parseDerivation } from '../nix/derivation.ts';
import { exportOrder, writeExport } from '../nix/export.ts';
import { parseHash } from '../nix/hash.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { hostStore, type NixStoreHandle } from '../nix/private-store.ts';
import { servePool } from '../nix/serve-session.ts';
import { ServeConnection } from '../nix/serve-protocol.ts';
import { NixBuildStatus, type ServeBuildResult } from '../nix/serve-wire.ts';
import { exportPaths, importVerified, jointClosureSize, queryPathInfos } from '../nix/transfer.ts';
import type { Logger } from '../util/logger.ts';
import { stepSuccess } from './step-success.ts';

/** Hydra's ssh options (build-remote.cc): no X11 or agent forwarding, never prompt, give up connecting after 60 s, TCP keepalives. */
export const SSH_OPTIONS = ['-x', '-a', '-oBatchMode=yes', '-oConnectTimeout=60', '-oTCPKeepAlive=yes'] as const;

/** The ssh command line for a machine (without the program name). */
export function sshArgs(spec: MachineSpec, knownHostsFile: string | null): string[] {
  const args: string[] = [];
  if (spec.sshKey) args.push('-i', spec.sshKey);
  if (knownHostsFile) args.push(`-oUserKnownHostsFile=${knownHostsFile}`);
  if (spec.port !== null) args.push('-p', String(spec.port));
  // The destination after `--`: it can never be read as an option.
  args.push(...SSH_OPTIONS, '--', spec.destination, 'nix-store', '--serve', '--write');
  return args;
}

/** The known_hosts line for column 8 (`[host]:port` when the port is not ssh's default). */
export function knownHostsLine(spec: MachineSpec): string | null {
  if (!spec.publicHostKey) return null;
  const host = spec.port !== null && spec.port !== 22 ? `[${spec.host}]:${spec.port}` : spec.host;
  return `${host} ${spec.publicHostKey}\n`;
}

// eslint-disable-next-line no-control-regex
const ANSI_ESCAPE = /\x1b\[[0-9;]*[A-Za-z]/g;

/** What a remote BuildResult status means for the step, as Hydra's runner maps it. */
export type RemoteVerdict = { kind: 'success'; cached: boolean } | { kind: 'failure'; status: 1 | 7 | 10 | 12 } | { kind: 'transient' };

export function remoteVerdict(status: number): RemoteVerdict {
  switch (status) {
    case NixBuildStatus.Built:
      return { kind: 'success', cached: false };
    case NixBuildStatus.Substituted:
    case NixBuildStatus.AlreadyValid:
    case NixBuildStatus.ResolvesToAlreadyValid:
      return { kind: 'success', cached: true };
    case NixBuildStatus.PermanentFailure:
    case NixBuildStatus.InputRejected:
    case NixBuildStatus.OutputRejected:
      return { kind: 'failure', status: 1 };
    case NixBuildStatus.TimedOut:
      return { kind: 'failure', status: 7 };
    case NixBuildStatus.LogLimitExceeded:
      return { kind: 'failure', status: 10 };
    case NixBuildStatus.NotDeterministic:
      return { kind: 'failure', status: 12 };
    default:
      // Transient and miscellaneous failures are retried by Hydra; the rest it aborts. Both come back for another try here.
      return { kind: 'transient' };
  }
}

export interface SshMachineOptions {
  readonly spec: MachineSpec;
  /** Where build logs go (`<hydraDataDir>/build-logs/…`, as other builders write them). */
  readonly hydraDataDir: string;
  /** The runner's store (default: the host's). */
  readonly localStore?: NixStoreHandle;
  /** Let the machine substitute missing inputs from its own caches first (Hydra does). */
  readonly substitute?: boolean;
  /** Idle connections are closed after this long (default 5 minutes). */
  readonly idleTimeoutMs?: number;
  readonly log?: Logger;
}

interface Link {
  readonly conn: ServeConnection;
  readonly child: ChildProcessWithoutNullStreams;
  idleTimer: NodeJS.Timeout | null;
}

interface Running {
  link: Link | null;
  aborted: boolean;
}

/** One build machine reached over SSH; its connections are kept and reused from step to step. */
export class SshMachine implements BuilderPort {
  readonly spec: MachineSpec;
  private readonly localStore: NixStoreHandle;
  private readonly idle: Link[] = [];
  private readonly running = new Map<string, Running>();
  private tmpDir: Promise<string> | null = null;
  private sendQueue: Promise<void> = Promise.resolve();
  private closed = false;
  /** Connections opened so far (each one an ssh login). */
  connectionsOpened = 0;

  constructor(private readonly o: SshMachineOptions) {
    this.spec = o.spec;
    this.localStore = o.localStore ?? hostStore;
  }

  start(job: StepJob, report: (o: StepOutcome) => void, progress: (busy: StepBusyCode) => void): void {
    const run: Running = { link: null, aborted: false };
    this.running.set(job.jobId, run);
    void this.step(job, run, progress)
      .catch((err: unknown): StepOutcome => this.transientOf(err, job))
      .then((outcome) => {
        if (this.running.get(job.jobId) === run) {
          this.running.delete(job.jobId);
          report(outcome);
        }
      });
  }

  abort(jobId: string): void {
    const run = this.running.get(jobId);
    if (!run) return;
    this.running.delete(jobId);
    run.aborted = true;
    if (run.link) this.hangUp(run.link);
  }

  /** Closes the idle connections and refuses new steps; running ones end on their own. */
  async close(): Promise<void> {
    this.closed = true;
    for (const l of this.idle.splice(0)) this.hangUp(l);
    if (this.tmpDir) await rm(await this.tmpDir, { recursive: true, force: true });
  }

  private transientOf(err: unknown, job: StepJob): StepOutcome {
    const e = err as Error;
    // The machine failed us (unreachable, wrong host key, protocol, a NAR not matching its hash): it gets a backoff.
    const machineFault =
      e instanceof ServeConnectionError || e instanceof ServeProtocolError || e instanceof SshHostKeyError || e instanceof NarHashMismatchError || e instanceof UnexpectedStorePathError;
    this.o.log?.warn({ machine: this.spec.name, jobId: job.jobId, drvPath: job.drvPath, code: (e as { code?: string }).code, err: e?.message }, 'step failed on the machine');
    return { kind: 'transient', errorMsg: `${this.spec.name}: ${e?.message ?? String(err)}`, machineFault };
  }

  /** A temporary directory (mode 700) holding the machine's known_hosts (mode 600). */
  private knownHosts(): Promise<string | null> {
    const line = knownHostsLine(this.spec);
    if (line === null) return Promise.resolve(null);
    this.tmpDir ??= (async () => {
      const dir = await mkdtemp(join(tmpdir(), 'hydrant-ssh-'));
      await writeFile(join(dir, 'known_hosts'), line, { mode: 0o600 });
      await chmod(join(dir, 'known_hosts'), 0o600);
      return dir;
    })();
    return this.tmpDir.then((d) => join(d, 'known_hosts'));
  }

  private async connect(): Promise<Link> {
    const child = this.spec.isLocalhost
      ? this.localStore.spawn('nix-store', ['--builders', '', '--serve', '--write'])
      : spawn('ssh', sshArgs(this.spec, await this.knownHosts()), { stdio: ['pipe', 'pipe', 'pipe'] });
    this.connectionsOpened++;
    try {
      return { conn: await ServeConnection.open(child, this.spec.name), child, idleTimer: null };
    } catch (e) {
      child.kill('SIGKILL');
      if (e instanceof ServeConnectionError && /Host key verification failed/.test(e.stderr)) throw new SshHostKeyError(this.spec.name);
      throw e;
    }
  }

  /** An idle connection whose process still runs, or a new one; `reused` says which. */
  private async acquire(): Promise<{ link: Link; reused: boolean }> {
    for (let l = this.idle.pop(); l; l = this.idle.pop()) {
      if (l.idleTimer) clearTimeout(l.idleTimer);
      if (!l.conn.broken) return { link: l, reused: true };
      this.hangUp(l);
    }
    return { link: await this.connect(), reused: false };
  }

  private release(l: Link): void {
    if (this.closed || l.conn.broken || this.idle.length >= this.spec.maxJobs) {
      this.hangUp(l);
      return;
    }
    l.idleTimer = setTimeout(() => {
      const i = this.idle.indexOf(l);
      if (i >= 0) this.idle.splice(i, 1);
      this.hangUp(l);
    }, this.o.idleTimeoutMs ?? 300_000);
    l.idleTimer.unref();
    this.idle.push(l);
  }

  /** Ends a connection: its stdin closes and its process is killed, so the remote side sees the hang-up. */
  private hangUp(l: Link): void {
    if (l.idleTimer) clearTimeout(l.idleTimer);
    l.conn.close();
    // nix-store stops its build on SIGINT; ssh's exit closes the channel, on which the remote nix-store stops.
    if (l.child.exitCode === null && l.child.signalCode === null) l.child.kill(this.spec.isLocalhost ? 'SIGINT' : 'SIGTERM');
  }

  /** One step at a time sends inputs to a machine (Hydra's send lock), for at most 600 s of waiting. */
  private async withSendLock<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.sendQueue;
    let release!: () => void;
    this.sendQueue = new Promise<void>((r) => (release = r));
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((r) => (timer = setTimeout(r, 600_000)));
    await Promise.race([before, waited]);
    clearTimeout(timer);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private async step(job: StepJob, run: Running, progress: (busy: StepBusyCode) => void): Promise<StepOutcome> {
    const local = this.localStore;
    // localhost serves the runner's own store: nothing to copy either way.
    const sameStore = this.spec.isLocalhost;
    if (this.closed) throw new ServeConnectionError(this.spec.name, 'the machine was removed');
    const drv = parseDerivation(await readFile(local.realPath(job.drvPath), 'utf8'));
    const basic = await basicDerivation(local, drv);
    if (!basic) return { kind: 'transient', errorMsg: `${job.drvPath}: an input's output path is not fixed by its .drv (floating content-addressed), which SSH machines cannot take yet`, machineFault: false };

    progress(StepBusy.Connecting);
    let { link, reused } = await this.acquire();
    run.link = link;
    if (run.aborted) {
      this.hangUp(link);
      throw new Error('aborted');
    }
    let overheadMs = 0;
    try {
      if (!sameStore) {
        progress(StepBusy.SendingInputs);
        const t0 = Date.now();
        const closure = basic.inputSrcs.length === 0 ? [] : await servePool(local).use((s) => s.queryClosure(basic.inputSrcs, false));
        let present: string[];
        try {
          present = await link.conn.queryValidPaths(closure, { lock: true, substitute: this.o.substitute ?? true });
        } catch (e) {
          // A kept connection may have died while idle (the machine restarted): one fresh try.
          if (!reused || !(e instanceof ServeConnectionError)) throw e;
          this.hangUp(link);
          ({ link, reused } = await this.acquire().then((a) => ({ ...a, reused: false })));
          run.link = link;
          present = await link.conn.queryValidPaths(closure, { lock: true, substitute: this.o.substitute ?? true });
        }
        const have = new Set(present);
        const missing = closure.filter((p) => !have.has(p));
        if (missing.length > 0) await this.withSendLock(() => this.sendPaths(link.conn, missing));
        overheadMs += Date.now() - t0;
      }

      const logFile = buildLogPath(this.o.hydraDataDir, job.drvPath);
      // A log that cannot be written (a full disk) ends the step, which is retried, as in Hydra.
      const log = new BuildLogWriter(logFile, 'w', () => this.hangUp(link));
      progress(StepBusy.Building);
      let result: ServeBuildResult;
      try {
        result = await link.conn.buildDerivation(
          job.drvPath,
          basic,
          {
            maxSilentTime: job.maxSilentTime,
            buildTimeout: job.buildTimeout,
            maxLogSize: Number.isFinite(job.maxLogSize) ? job.maxLogSize : 0,
            repeats: job.repeats,
            enforceDeterminism: job.enforceDeterminism,
          },
          (chunk) => void log.write(chunk),
        );
      } finally {
        const logError = await log.close();
        if (logError && !run.aborted) throw logError;
      }
      const startTime = result.startTime || unixNow();
      const stopTime = result.stopTime || unixNow();
      const errorMsg = result.errorMsg.replace(ANSI_ESCAPE, '');
      const verdict = remoteVerdict(result.status);
      // Determinism checks: the rounds the machine's Nix ran (Hydra's build-remote.cc:358-359).
      const rounds = (job.repeats ?? 0) > 0 ? { timesBuilt: result.timesBuilt, isNonDeterministic: result.isNonDeterministic } : {};
      if (verdict.kind === 'failure') {
        this.release(link);
        return { kind: 'failure', status: verdict.status, errorMsg, startTime, stopTime, logFile, ...rounds };
      }
      if (verdict.kind === 'transient') {
        this.release(link);
        return { kind: 'transient', errorMsg: `${this.spec.name}: build status ${result.status}: ${errorMsg}`, machineFault: false };
      }

      progress(StepBusy.ReceivingOutputs);
      const t1 = Date.now();
      const outputPaths = [...basic.outputs.entries()].map(([name, o]) => ({ name, path: o.path }));
      const infos = new Map((await link.conn.queryPathInfos(outputPaths.map((o) => o.path))).map((i) => [i.path, i]));
      const absent = outputPaths.filter((o) => !infos.has(o.path));
      if (absent.length > 0) throw new UnexpectedStorePathError(absent[0]!.path, 'missing');
      const totalNar = [...infos.values()].reduce((n, i) => n + i.narSize, 0);
      if (job.maxOutputSize > 0 && totalNar > job.maxOutputSize) { // 0: no limit, as upstream
        this.release(link);
        return { kind: 'failure', status: 11, errorMsg: `the outputs are ${totalNar} bytes (limit ${job.maxOutputSize})`, startTime, stopTime, logFile };
      }
      if (!sameStore) await this.fetchOutputs(link.conn, [...infos.values()]);
      overheadMs += Date.now() - t1;
      this.release(link);

      progress(StepBusy.PostProcessing);
      const closureSizes = await this.closureSizes(outputPaths.map((o) => o.path));
      const built = outputPaths.map((o) => ({ name: o.name, path: o.path, narSize: infos.get(o.path)!.narSize, closureSize: closureSizes.get(o.path) ?? 0 }));
      // The outputs are in the runner's store now, with their closures: the joint closure is read there.
      const closureSize = await jointClosureSize(this.localStore, outputPaths.map((o) => o.path)).catch(() => undefined);
      return await stepSuccess({ outputs: built, startTime, stopTime, overheadMs, logFile, closureSize, ...rounds }, (p) => local.realPath(p));
    } catch (e) {
      this.hangUp(link);
      throw e;
    }
  }

  /** Sends paths of the local store the machine lacks, references first. */
  private async sendPaths(conn: ServeConnection, missing: readonly string[]): Promise<void> {
    this.o.log?.debug({ machine: this.spec.name, paths: missing.length }, 'sending inputs');
    if (!conn.canAddToStoreNar) {
      await conn.importPaths(exportPaths(this.localStore, missing));
      return;
    }
    const infos = new Map((await queryPathInfos(this.localStore, missing)).map((i) => [i.path, i]));
    for (const p of exportOrder(infos.keys(), (q) => infos.get(q)!.references)) {
      const i = infos.get(p)!;
      // The machine hashes the NAR and refuses it unless it matches narHash.
      await conn.addToStoreNar({ path: p, deriver: i.deriver, narHash: i.narHash, narSize: i.narSize, references: i.references }, narChunks(this.localStore.realPath(p)));
    }
  }

  /**
   * Dumps the outputs the runner's store lacks and imports them once every
   * NAR matched the hash and size the machine gave (importVerified).
   */
  private async fetchOutputs(conn: ServeConnection, infos: readonly { path: string; deriver: string | null; references: string[]; narHash: string; narSize: number }[]): Promise<void> {
    const have = new Set(await servePool(this.localStore).use((s) => s.queryValid(infos.map((i) => i.path))));
    const wanted = new Map(infos.filter((i) => !have.has(i.path)).map((i) => [i.path, i]));
    if (wanted.size === 0) return;
    const order = exportOrder(wanted.keys(), (p) => wanted.get(p)!.references);
    const stream = writeExport(
      (function* () {
        for (const p of order) {
          const i = wanted.get(p)!;
          yield { path: p, references: i.references, deriver: i.deriver, nar: conn.dumpStorePath(p) };
        }
      })(),
    );
    await importVerified(this.localStore, stream, new Map([...wanted].map(([p, i]) => [p, { narHash: parseHash(i.narHash), narSize: i.narSize }])));
  }

  private async closureSizes(paths: readonly string[]): Promise<Map<string, number>> {
    const { stdout } = await this.localStore.runChecked('nix', ['path-info', '--json', '--closure-size', ...paths]);
    const list = JSON.parse(stdout.toString('utf8')) as { path: string; closureSize: number }[];
    return new Map(list.map((i) => [i.path, i.closureSize]));
  }
}
