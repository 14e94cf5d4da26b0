import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { credentials, Metadata, status, type ClientDuplexStream, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostSystem } from '../../src/nix/host-system.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { FloatingNarCheck } from '../../src/nix/ca-output.ts';
import { Join, OutputHeader, Ping, ResultState, RunnerClient, type BuilderMessage, type NarChunk, type BuildOrder, type RunnerMessage, type UploadOutputMessage, type UploadReceipt } from '../../src/protocol/gen/runner.ts';
import { createBuilderClient, PROTOCOL_VERSION, type BuilderClient } from '../../src/protocol/server.ts';
import type { TestDatabase } from '../helpers/db.ts';
import {
  buildRow,
  busySteps,
  expectSucceeded,
  joined,
  processesWithArg,
  QUICK_RECONNECT,
  readBuildLog,
  startBuilder,
  startRunner,
  startRunnerWithProxiedBuilder,
  stepRows,
  submit,
  TcpProxy,
  useFleet,
  type CliProcess,
  type RunnerProcess,
} from '../helpers/fleet.ts';
import { MK_DRV, writeRelease, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Builder faults through the whole stack: a `hydrant serve` runner, real
 * `hydrant builder` processes with private stores (or hand-made protocol
 * clients where a builder must misbehave), real gRPC, PostgreSQL and Nix.
 */

function uniqueSleep(seconds: number): string {
  return `${seconds}.${String(randomInt(1, 1_000_000)).padStart(6, '0')}1`;
}

async function allFinished(db: TestDatabase): Promise<boolean> {
  return (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0;
}

async function validInRunnerStore(path: string): Promise<boolean> {
  return (await runNix('nix-store', ['--check-validity', '--print-invalid', path])).stdout.toString() === '';
}

async function outputPath(db: TestDatabase, build: number): Promise<string> {
  return (await db.pool.query("select path from buildoutputs where build = $1 and name = 'out'", [build])).rows[0].path as string;
}

/** A local port nothing listens on: a connection to it is refused. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Kills whatever is left of builds that ran on builders killed by a test. */
function killLeftovers(args: readonly string[]): void {
  for (const a of args) for (const pid of processesWithArg(a)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}

describe('a builder killed in the middle of a build', () => {
  const { db, dir, procs } = useFleet('killed', () => killLeftovers([sleep]));
  const nonce = randomBytes(4).toString('hex');
  // The first attempt sleeps until its builder is killed; the retry, started once `retried` exists, is quick.
  const sleep = uniqueSleep(600);
  const retried = join(dir, 'retried');
  let runner: RunnerProcess;

  beforeAll(async () => {
    // Short grace and ping timeout so that the loss is noticed and acted on quickly;
    // a one-second retry interval so that the retry does not wait Hydra's minute.
    runner = await startRunner(dir, db.url, 'builderGraceInS = 1\nbuilderPingTimeoutInS = 3\nretryInterval = 1\nretryBackoff = 1');
    procs.push(runner.proc);
    for (const id of ['b1', 'b2']) procs.push(startBuilder(dir, `127.0.0.1:${runner.port}`, runner.tokenFile, id));
    await joined(runner.proc, ['b1', 'b2']);
  });

  it('retries the step on the other builder; the build succeeds and nothing stays busy', async () => {
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in { slow = mk { name = "slow-${nonce}"; script = "echo building; if [ ! -e ${retried} ]; then /bin/sleep ${sleep}; fi; echo built > $out"; }; }`);
    const { slow: id } = await submit(db.url, file, 'killed');
    await waitFor(async () => (await stepRows(db.pool, id!)).some((r) => r.busy === 30), 60_000, 'the step to be building');
    await waitFor(() => processesWithArg(sleep).length > 0, 60_000, 'the build process');
    writeFileSync(retried, '');
    const victim = (await stepRows(db.pool, id!))[0]!.machine;
    const survivor = victim === 'b1' ? 'b2' : 'b1';
    const victimProc = procs[victim === 'b1' ? 1 : 2]!;
    victimProc.child.kill('SIGKILL');
    await victimProc.exited;

    await waitFor(() => allFinished(db), 90_000, 'the build to finish');
    // The attempt on the killed builder ended as aborted (3), the retry on the other one succeeded.
    await expectSucceeded(db.pool, id!, [
      [victim, 3, 0],
      [survivor, 0, 0],
    ]);
    expect(await validInRunnerStore(await outputPath(db, id!))).toBe(true);
    expect(runner.proc.output()).toMatch(new RegExp(`"machine":"${victim}","reason":"GRACE_EXPIRED","msg":"builder removed"`));
    // The survivor was never dropped, whatever the ping timeout.
    expect(runner.proc.output()).not.toMatch(new RegExp(`"machine":"${survivor}"[^\\n]*"msg":"builder (disconnected|removed)`));
  }, 150_000);
});

describe('a builder whose connection breaks and comes back within the grace period', () => {
  const fleet = useFleet('reconnect');
  const { db, dir, procs } = fleet;
  let runner: RunnerProcess;
  let proxy: TcpProxy;

  beforeAll(async () => {
    // A grace period far longer than any test here: a job retried before it ran out was
    // failed by the reconnect itself. A lost job is retried after a second. One builder,
    // dialling through the proxy: a job it lost could only come back to it as a second attempt.
    ({ runner, proxy } = await startRunnerWithProxiedBuilder(fleet, 'builderGraceInS = 600\nretryInterval = 1\nretryBackoff = 1', TcpProxy.start));
  });

  /**
   * Builds one derivation that logs a line, waits for a gate file, and logs
   * another; breaks the connection with `cut` once the first line reached the
   * runner, and opens the gate once the builder has re-joined (so the job is
   * running across the reconnect however slow the machine); checks that the
   * job was never failed or retried and the whole log arrived.
   */
  async function buildAcrossCut(jobset: string, cut: () => number): Promise<void> {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, `${jobset}.nix`);
    const gate = join(dir, `${jobset}-rejoined`);
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} in { job = mk { name = "cut-${nonce}"; script = "echo before-cut; while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; echo after-cut; echo built > $out"; }; }`,
    );
    const { job: id } = await submit(db.url, file, jobset);
    const drv = (await buildRow(db.pool, id!)).drvpath;
    await waitFor(() => readBuildLog(dir, drv)?.includes('before-cut') === true, 60_000, 'the first log line at the runner');
    const accepted = proxy.accepted;
    const reconnected = () => (runner.proc.output().match(/"msg":"builder reconnected"/g) ?? []).length;
    const reconnects = reconnected();
    try {
      expect(cut()).toBeGreaterThan(0);
      await waitFor(() => reconnected() > reconnects, 60_000, 'the builder to re-join');
    } finally {
      writeFileSync(gate, '');
    }

    await waitFor(() => allFinished(db), 90_000, 'the build to finish');
    // The builder dialled again through the proxy.
    expect(proxy.accepted).toBeGreaterThan(accepted);
    expect(reconnected()).toBe(reconnects + 1);
    // One attempt, never aborted nor retried: the job survived the reconnect.
    await expectSucceeded(db.pool, id!, [['b1', 0, 0]]);
    expect(await validInRunnerStore(await outputPath(db, id!))).toBe(true);
    expect(runner.proc.output()).not.toMatch(/"msg":"builder removed"/);
    // The log streamed before the cut is kept, and the rest followed in the new session.
    const log = readBuildLog(dir, drv)!.toString('utf8');
    expect(log).toContain('before-cut');
    expect(log).toContain('after-cut');
  }

  it('keeps the job when both ends see the connection drop', async () => {
    await buildAcrossCut('full-cut', () => proxy.cut());
  }, 120_000);

  it('keeps the job when the builder re-joins before the runner has noticed the old connection is dead', async () => {
    await buildAcrossCut('half-cut', () => proxy.cutBuilderSide());
    expect(runner.proc.output()).toMatch(/"machine":"b1","jobs":1,"lostJobs":0,"replacedConnection":true,"msg":"builder reconnected"/);
  }, 120_000);

  it('keeps what a build wrote while its builder was cut off, when the build ends before the builder re-joins', async () => {
    const nonce = randomBytes(4).toString('hex');
    const gate = join(dir, 'offline-gate');
    const file = join(dir, 'offline.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} in { job = mk { name = "offline-${nonce}"; script = "echo before-cut; while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; echo written-offline; echo built > $out"; }; }`,
    );
    const { job: id } = await submit(db.url, file, 'offline');
    const drv = (await buildRow(db.pool, id!)).drvpath;
    const out = await outputPath(db, id!);
    await waitFor(() => readBuildLog(dir, drv)?.includes('before-cut') === true, 60_000, 'the first log line at the runner');
    // The builder's dials lead nowhere until its build has ended (its output is in the builder's store).
    const runnerPort = proxy.target;
    proxy.target = await closedPort();
    const dials = proxy.accepted;
    try {
      expect(proxy.cut()).toBeGreaterThan(0);
      await waitFor(() => proxy.accepted > dials, 60_000, 'the builder to dial again');
      writeFileSync(gate, '');
      await waitFor(() => existsSync(join(dir, 'b1', out)), 60_000, 'the build to end');
    } finally {
      proxy.target = runnerPort;
    }
    await waitFor(() => allFinished(db), 90_000, 'the build to finish');
    await expectSucceeded(db.pool, id!, [['b1', 0, 0]]);
    // The line written while no session was joined reached the runner once the builder re-joined.
    const log = readBuildLog(dir, drv)!.toString('utf8');
    expect(log).toContain('before-cut');
    expect(log).toContain('written-offline');
  }, 120_000);

  it('retries at once, not after the grace period, the job of a builder that restarted without it', async () => {
    const nonce = randomBytes(4).toString('hex');
    // The first attempt sleeps until its builder is killed; the retry, started once `retried` exists, is quick.
    const sleep = uniqueSleep(600);
    const retried = join(dir, 'restart-retried');
    const file = join(dir, 'restart.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in { job = mk { name = "restart-${nonce}"; script = "echo building; if [ ! -e ${retried} ]; then /bin/sleep ${sleep}; fi; echo built > $out"; }; }`);
    const { job: id } = await submit(db.url, file, 'restart');
    try {
      await waitFor(async () => (await stepRows(db.pool, id!)).some((r) => r.busy === 30), 60_000, 'the step to be building');
      await waitFor(() => processesWithArg(sleep).length > 0, 60_000, 'the build process');
      writeFileSync(retried, '');
      const old = procs.pop()!;
      old.child.kill('SIGKILL');
      await old.exited;
      procs.push(startBuilder(dir, `127.0.0.1:${proxy.port}`, runner.tokenFile, 'b1', QUICK_RECONNECT));

      // Well within the 600 s grace period: the restarted builder said it runs nothing.
      await waitFor(() => allFinished(db), 90_000, 'the build to finish');
      await expectSucceeded(db.pool, id!, [
        ['b1', 3, 0],
        ['b1', 0, 0],
      ]);
      expect(runner.proc.output()).toMatch(/"machine":"b1","jobs":0,"lostJobs":1,"replacedConnection":false,"msg":"builder reconnected"/);
      expect(runner.proc.output()).not.toMatch(/"msg":"builder removed"/);
    } finally {
      killLeftovers([sleep]);
    }
  }, 150_000);
});

describe('a builder that outlives its runner', () => {
  const fleet = useFleet('orphan', () => killLeftovers([sleep]));
  const { db, dir, procs } = fleet;
  const nonce = randomBytes(4).toString('hex');
  const sleep = uniqueSleep(60);
  const fast = join(dir, 'fast');

  it('aborts, on joining a restarted runner, the build the new runner does not know; the step is built again', async () => {
    const { runner: first, proxy, builder } = await startRunnerWithProxiedBuilder(fleet, 'retryInterval = 1\nretryBackoff = 1', TcpProxy.start);
    const file = join(dir, 'release.nix');
    // Slow the first time; once `fast` exists (for the attempt the new runner orders), quick.
    writeFileSync(file, `{ }: let ${MK_DRV} in { job = mk { name = "orphan-${nonce}"; script = "if [ -e ${fast} ]; then echo quick; else /bin/sleep ${sleep}; fi; echo built > $out"; }; }`);
    const { job: id } = await submit(db.url, file, 'orphan');
    await waitFor(async () => (await stepRows(db.pool, id!)).some((r) => r.busy === 30), 60_000, 'the step to be building');
    await waitFor(() => processesWithArg(sleep).length > 0, 10_000, 'the build process');
    const orphanPids = processesWithArg(sleep);

    // The runner dies; a new one takes over the database (and the builder's token).
    first.proc.child.kill('SIGKILL');
    await first.proc.exited;
    writeFileSync(fast, '');
    const second = await startRunner(dir, db.url, 'retryInterval = 1\nretryBackoff = 1', { token: first.token });
    procs.push(second.proc);
    proxy.target = second.port;
    proxy.cut();

    await joined(second.proc, ['b1']);
    await second.proc.waitFor(/"machine":"b1","job":"[^"]+","msg":"builder runs a job the runner does not know; aborting it"/, 60_000);
    // The build the first runner ordered is stopped, long before its sleep would end.
    await waitFor(() => orphanPids.every((pid) => !existsSync(`/proc/${pid}`)), 30_000, 'the orphaned build to be killed');
    await builder.waitFor(/job \S+ aborted: the runner does not know this job/, 60_000);

    await waitFor(() => allFinished(db), 90_000, 'the build to finish');
    // The first attempt was aborted (3) when the new runner started; the second built.
    await expectSucceeded(db.pool, id!, [
      ['b1', 3, 0],
      ['b1', 0, 0],
    ]);
    expect(await validInRunnerStore(await outputPath(db, id!))).toBe(true);
    second.proc.child.kill('SIGTERM');
    expect(await second.proc.exited).toBe(0);
  }, 180_000);
});

describe('a builder that lies about a content-addressed output', () => {
  const { db, dir, procs } = useFleet('ca-forged');
  const clients: { close(): void }[] = [];
  afterAll(() => {
    for (const c of clients) c.close();
  });

  it("refuses an output whose content is not what its path says, imports nothing, and builds it elsewhere", async () => {
    const nonce = randomBytes(4).toString('hex');
    const runner = await startRunner(dir, db.url, 'builderGraceInS = 1\nretryInterval = 1\nretryBackoff = 1', { env: { HYDRANT_LOG_LEVEL: 'debug' } });
    procs.push(runner.proc);
    const address = `127.0.0.1:${runner.port}`;
    const forger = await HandMadeBuilder.join(address, runner.token, 'ca-forger', { supportedFeatures: ['ca-derivations'] });
    clients.push(forger);
    await joined(runner.proc, ['ca-forger']);
    const file = join(dir, 'release.nix');
    writeFileSync(
      file,
      `{ }: { x = derivation { name = "ca-forged-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo honest > $out" ];
        __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }; }`,
    );
    const { x } = await submit(db.url, file, 'ca-forged', ['x']);
    const order = await forger.nextOrder();
    expect(order.outputs.find((o) => o.name === 'out')?.path || null).toBeNull(); // floating: no path before the build
    // The forger claims the path the honest content has, and sends other bytes under it (NAR hash and size consistent).
    const honest = await narOf(dir, 'honest\n');
    const drvName = `ca-forged-${nonce}`;
    const honestCheck = new FloatingNarCheck({ storePath: `/nix/store/${'0'.repeat(32)}-${drvName}`, references: [], drvName, outputName: 'out', method: 'recursive', algo: 'sha256' });
    honestCheck.update(honest.bytes);
    const claimedPath = honestCheck.result().expected;
    const forged = await narOf(dir, 'forged\n');
    const c = forger.b.client;
    const refused = await expectCode(upload(c, { jobId: order.jobId, outputName: 'out', storePath: claimedPath, narHash: forged.hash, narSize: forged.size }, forged.bytes), status.INVALID_ARGUMENT);
    expect(refused.details).toContain(claimedPath);
    expect(refused.details).toMatch(/content/);
    expect(await validInRunnerStore(claimedPath)).toBe(false);
    const logged = records(runner.proc, 'refusing a content-addressed output whose content does not match its path');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ machine: 'ca-forger', path: claimedPath, drv: order.drvPath });
    await unary((cb) =>
      c.complete(
        { jobId: order.jobId, state: ResultState.RESULT_STATE_SUCCESS, errorMsg: '', outputs: [{ name: 'out', storePath: claimedPath, narHash: forged.hash, narSize: forged.size, closureSize: forged.size }], nixSupport: undefined, timings: undefined },
        cb,
      ),
    );
    // The attempt fails (aborted, retried); nothing of it is recorded as the output.
    await waitFor(async () => (await stepRows(db.pool, x!)).some((r) => r.machine === 'ca-forger' && r.busy === 0), 30_000, "the forger's step row to end");
    expect((await stepRows(db.pool, x!)).find((r) => r.machine === 'ca-forger')!.status).toBe(3);
    expect(await validInRunnerStore(claimedPath)).toBe(false);
    forger.close();

    // An honest builder builds it: the same path, with the honest content.
    procs.push(startBuilder(dir, address, runner.tokenFile, 'b1'));
    await waitFor(() => allFinished(db), 90_000, 'the build to finish');
    expect((await buildRow(db.pool, x!)).buildstatus).toBe(0);
    expect(await outputPath(db, x!)).toBe(claimedPath);
    expect(readFileSync(claimedPath, 'utf8')).toBe('honest\n');
    expect(await busySteps(db.pool)).toBe(0);
  }, 180_000);
});

// ---- hand-made protocol clients ---------------------------------------------

function unary<Res>(start: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function expectCode(p: Promise<unknown>, ...codes: status[]): Promise<ServiceError> {
  return p.then(
    () => {
      throw new Error(`expected status ${codes.join(' or ')}, the call succeeded`);
    },
    (err: ServiceError) => {
      expect(codes, err.details).toContain(err.code);
      return err;
    },
  );
}

/** A client-streaming call: writes `messages`, ends, resolves with the response. */
function clientStream<Req, Res>(open: (cb: (err: ServiceError | null, res?: Res) => void) => { write(m: Req): boolean; end(): void; on(e: 'error', f: () => void): unknown }, messages: Req[]): Promise<Res> {
  return new Promise((resolve, reject) => {
    const call = open((err, res) => (err ? reject(err) : resolve(res!)));
    call.on('error', () => {});
    for (const m of messages) call.write(m);
    call.end();
  });
}

/** UploadOutput: the header, then the NAR in one data chunk. */
function upload(c: RunnerClient, header: Partial<OutputHeader>, nar: Buffer): Promise<UploadReceipt> {
  const msgs: UploadOutputMessage[] = [
    { part: { $case: 'header', value: OutputHeader.fromPartial(header) } },
    { part: { $case: 'data', value: nar } },
  ];
  return clientStream<UploadOutputMessage, UploadReceipt>((cb) => c.uploadOutput(cb), msgs);
}

/** Reads a server stream to its end; rejects with its error status. */
function drain(call: ClientReadableStream<NarChunk>): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    call.on('data', () => n++);
    call.on('error', (e: ServiceError) => reject(e));
    call.on('end', () => resolve(n));
  });
}

function joinMessage(machineId: string, over: Partial<Join> = {}): BuilderMessage {
  return {
    kind: {
      $case: 'join',
      value: Join.fromPartial({ protocolVersion: PROTOCOL_VERSION, machineId, hostname: 'handmade', systems: [hostSystem()], maxJobs: 1, speedFactor: 1, cpuCount: 1, ...over }),
    },
  };
}

/** A builder written by hand against the protocol: it joins, and then does whatever the test says. */
class HandMadeBuilder {
  readonly orders: BuildOrder[] = [];
  #waiters: (() => void)[] = [];

  private constructor(
    readonly b: BuilderClient,
    readonly control: ClientDuplexStream<BuilderMessage, RunnerMessage>,
  ) {}

  static async join(address: string, token: string, machineId: string, over: Partial<Join> = {}): Promise<HandMadeBuilder> {
    const b = createBuilderClient(address, token);
    const control = b.client.control();
    control.on('error', () => {});
    const joinedMsg = new Promise<RunnerMessage>((resolve, reject) => {
      control.once('data', resolve);
      control.once('error', reject);
    });
    control.write(joinMessage(machineId, over));
    const reply = await joinedMsg;
    if (reply.kind?.$case !== 'joined') throw new Error(`expected joined, got ${reply.kind?.$case}`);
    b.setSession(reply.kind.value.sessionId);
    const h = new HandMadeBuilder(b, control);
    control.on('data', (m: RunnerMessage) => {
      if (m.kind?.$case === 'build') h.orders.push(m.kind.value);
      for (const w of h.#waiters.splice(0)) w();
    });
    // Keep the session alive whatever the runner's ping timeout.
    const ping = setInterval(() => control.write({ kind: { $case: 'ping', value: Ping.fromPartial({ buildDirFreePercent: 50, storeFreePercent: 50 }) } }), 1000);
    control.on('close', () => clearInterval(ping));
    h.close = () => {
      clearInterval(ping);
      control.end();
      control.cancel();
      b.close();
    };
    return h;
  }

  close: () => void = () => {};

  async nextOrder(ms = 60_000): Promise<BuildOrder> {
    const deadline = Date.now() + ms;
    while (this.orders.length === 0) {
      if (Date.now() > deadline) throw new Error('no build order came');
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 200);
      });
    }
    return this.orders.shift()!;
  }
}

/** The runner's JSON log records with `msg`. */
function records(proc: CliProcess, msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of proc.output().split('\n')) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a partial line
    }
  }
  return out;
}

describe('builders that are not who they claim to be', () => {
  // `slow` builds until this file exists (also made at the end, so that no build outlives a failed test).
  const release = () => writeFileSync(slowGate, '');
  const { db, dir, procs } = useFleet('forged', release);
  const slowGate = join(dir, 'slow-may-finish');
  const nonce = randomBytes(4).toString('hex');
  const cacheDir = join(dir, 'cache');
  const clients: { close(): void }[] = [];
  let runner: RunnerProcess;
  let address: string;

  beforeAll(async () => {
    // Debug logs name each job id as it is ordered; a file cache shows what gets published.
    runner = await startRunner(dir, db.url, `builderGraceInS = 1\nretryInterval = 1\nretryBackoff = 1\nremoteStoreAddr = ["file://${cacheDir}?compression=none"]`, { env: { HYDRANT_LOG_LEVEL: 'debug' } });
    procs.push(runner.proc);
    address = `127.0.0.1:${runner.port}`;
  });

  afterAll(() => {
    for (const c of clients) c.close();
  });

  it('refuses a builder that presents no token, a wrong one, or no session', async () => {
    const bare = new RunnerClient(address, credentials.createInsecure());
    const wrong = createBuilderClient(address, 'not-the-token');
    const emptyBearer = new RunnerClient(address, credentials.createInsecure());
    const valid = createBuilderClient(address, runner.token);
    clients.push(bare, wrong, emptyBearer, valid);
    const emptyMeta = new Metadata();
    emptyMeta.set('authorization', 'Bearer ');

    for (const [name, client, meta] of [['no token', bare, undefined], ['wrong token', wrong.client, undefined], ['empty bearer', emptyBearer, emptyMeta]] as const) {
      const ctl = meta ? client.control(meta) : client.control();
      const replied = new Promise<RunnerMessage>((resolve, reject) => {
        ctl.once('data', resolve);
        ctl.once('error', reject);
      });
      ctl.write(joinMessage(`intruder-${name.replace(' ', '-')}`));
      const e = await expectCode(replied, status.UNAUTHENTICATED);
      expect(e.details).toBe('missing or invalid bearer token');
      await expectCode(
        unary((cb) => (meta ? client.hasPath({ jobId: 'x', storePath: '/nix/store/x' }, meta, cb) : client.hasPath({ jobId: 'x', storePath: '/nix/store/x' }, cb))),
        status.UNAUTHENTICATED,
      );
    }
    // A valid token without a joined session names no machine: refused too.
    await expectCode(unary((cb) => valid.client.fetchRequisites({ jobId: '1.1' }, cb)), status.UNAUTHENTICATED);
    await new Promise((r) => setTimeout(r, 500));
    expect(runner.proc.output()).not.toMatch(/intruder/);
    expect(records(runner.proc, 'builder joined')).toEqual([]);
  });

  it("refuses calls for another builder's job, and an upload whose NAR does not match its hash; nothing is imported or published", async () => {
    const file = writeRelease(
      dir,
      `slow = mk { name = "slow-${nonce}"; script = "echo honest log; while [ ! -e ${slowGate} ]; do /bin/sleep 0.1; done; echo slow > $out"; };
        quick = mk { name = "quick-${nonce}"; script = "echo quick > $out"; };`,
    );
    // A real builder, preferred over the forger while it is free (higher speed factor).
    procs.push(startBuilder(dir, address, runner.tokenFile, 'b1'));
    await joined(runner.proc, ['b1']);
    const forger = await HandMadeBuilder.join(address, runner.token, 'forger', { speedFactor: 0.1 });
    clients.push(forger);
    await joined(runner.proc, ['forger']);

    // (a) b1 builds `slow`; the forger names b1's job in every job-scoped call.
    const { slow } = await submit(db.url, file, 'forged', ['slow']);
    const slowDrv = (await buildRow(db.pool, slow!)).drvpath;
    await waitFor(() => records(runner.proc, 'build order sent').some((r) => r.drv === slowDrv), 60_000, 'slow to be ordered');
    const ordered = records(runner.proc, 'build order sent').find((r) => r.drv === slowDrv)!;
    expect(ordered.machine).toBe('b1');
    const jobA = ordered.job as string;
    const slowOut = await outputPath(db, slow!);
    await waitFor(async () => (await stepRows(db.pool, slow!)).some((r) => r.busy === 30), 60_000, 'slow to be building on b1');

    const c = forger.b.client;
    const denied = [status.PERMISSION_DENIED, status.NOT_FOUND];
    await expectCode(unary((cb) => c.fetchRequisites({ jobId: jobA }, cb)), ...denied);
    await expectCode(unary((cb) => c.hasPath({ jobId: jobA, storePath: slowDrv }, cb)), ...denied);
    await expectCode(unary((cb) => c.stepStatus({ jobId: jobA, busy: 50 }, cb)), ...denied);
    await expectCode(drain(c.fetchNar({ jobId: jobA, storePath: slowDrv, accept: [], moreStorePaths: [] })), ...denied);
    await expectCode(clientStream((cb) => c.streamLog(cb), [{ jobId: jobA, compression: 0, data: Buffer.from('forged log line\n') }]), ...denied);
    const forgedNar = await narOf(dir, 'forged!');
    await expectCode(
      upload(c, { jobId: jobA, outputName: 'out', storePath: slowOut, narHash: forgedNar.hash, narSize: forgedNar.size }, forgedNar.bytes),
      ...denied,
    );
    await expectCode(
      unary((cb) =>
        c.complete({ jobId: jobA, state: ResultState.RESULT_STATE_BUILD_FAILURE, errorMsg: 'forged failure', outputs: [], nixSupport: undefined, timings: undefined }, cb),
      ),
      ...denied,
    );

    // (b) With b1 busy (slow waits for its gate), `quick` goes to the forger, which uploads a NAR that does not match the hash it claims.
    const { quick } = await submit(db.url, file, 'forged', ['quick']);
    const order = await forger.nextOrder();
    expect(order.drvPath).toBe((await buildRow(db.pool, quick!)).drvpath);
    const quickOut = order.outputs.find((o) => o.name === 'out')!.path!;
    expect(quickOut).toBe(await outputPath(db, quick!));
    await unary((cb) => c.fetchRequisites({ jobId: order.jobId }, cb)); // its own job: allowed
    const claimed = await narOf(dir, 'honest!'); // same size, other bytes
    const sent = await narOf(dir, 'forged!');
    expect(sent.size).toBe(claimed.size);
    const refused = await expectCode(
      upload(c, { jobId: order.jobId, outputName: 'out', storePath: quickOut, narHash: claimed.hash, narSize: claimed.size }, sent.bytes),
      status.INVALID_ARGUMENT,
    );
    expect(refused.details).toMatch(/hash/i);
    expect(await validInRunnerStore(quickOut)).toBe(false);
    // Claiming success without an accepted upload does not finish the build either.
    await unary((cb) =>
      c.complete(
        {
          jobId: order.jobId,
          state: ResultState.RESULT_STATE_SUCCESS,
          errorMsg: '',
          outputs: [{ name: 'out', storePath: quickOut, narHash: claimed.hash, narSize: claimed.size, closureSize: claimed.size }],
          nixSupport: undefined,
          timings: undefined,
        },
        cb,
      ),
    );
    await waitFor(async () => (await stepRows(db.pool, quick!)).some((r) => r.machine === 'forger' && r.busy === 0), 30_000, "the forger's step row to end");
    expect((await stepRows(db.pool, quick!)).find((r) => r.machine === 'forger')!.status).toBe(3);
    expect(await validInRunnerStore(quickOut)).toBe(false);
    forger.close();
    release();

    // The honest builder finishes both builds; only honest outputs reach the store and the cache.
    await waitFor(() => allFinished(db), 90_000, 'both builds to finish');
    expect((await buildRow(db.pool, slow!)).buildstatus).toBe(0);
    expect((await buildRow(db.pool, quick!)).buildstatus).toBe(0);
    expect((await stepRows(db.pool, slow!)).map((r) => [r.machine, r.status])).toEqual([['b1', 0]]);
    expect((await stepRows(db.pool, quick!)).at(-1)).toMatchObject({ machine: 'b1', status: 0, busy: 0 });
    expect(await busySteps(db.pool)).toBe(0);
    expect(readFileSync(quickOut, 'utf8')).toBe('quick\n');
    expect(readBuildLog(dir, slowDrv)!.toString('utf8')).not.toContain('forged');
    const narinfos = existsSync(cacheDir) ? readdirSync(cacheDir).filter((f) => f.endsWith('.narinfo')) : [];
    const hashPart = (p: string) => p.slice('/nix/store/'.length, '/nix/store/'.length + 32);
    expect(narinfos).toContain(`${hashPart(slowOut)}.narinfo`);
    expect(narinfos).toContain(`${hashPart(quickOut)}.narinfo`);
    // What was published is the honest output, not what the forger claimed.
    const narHash = (await runNix('nix-store', ['--query', '--hash', quickOut])).stdout.toString().trim();
    const narinfo = readFileSync(join(cacheDir, `${hashPart(quickOut)}.narinfo`), 'utf8');
    expect(narinfo).toContain(`NarHash: ${narHash}\n`);
    expect(narHash).not.toBe(claimed.hash);
  }, 180_000);
});

/** The NAR of a regular file holding `content`, with its hash as `sha256:<base32>`. */
async function narOf(dir: string, content: string): Promise<{ bytes: Buffer; hash: string; size: number }> {
  const f = join(mkdtempSync(join(dir, 'nar-')), 'file');
  writeFileSync(f, content);
  const parts: Buffer[] = [];
  for await (const c of narChunks(f)) parts.push(c);
  const bytes = Buffer.concat(parts);
  const digest = createHash('sha256').update(bytes).digest('hex');
  const { stdout } = await runNix('nix-hash', ['--type', 'sha256', '--to-base32', digest]);
  return { bytes, hash: `sha256:${stdout.toString().trim()}`, size: bytes.length };
}
