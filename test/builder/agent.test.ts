import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status, type Server } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BuilderAgent } from '../../src/builder/agent.ts';
import { hostStore, PrivateStore } from '../../src/nix/private-store.ts';
import { queryPathInfos } from '../../src/nix/transfer.ts';
import { validateBuilderConfig } from '../../src/config/builder-config.ts';
import { hostSystem } from '../../src/nix/host-system.ts';
import { BuilderUnauthenticatedError, type HydrantError } from '../../src/errors/index.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { exportOrder } from '../../src/nix/export.ts';
import { parseHash } from '../../src/nix/hash.ts';
import {
  ResultState,
  StepBusy,
  type BuildOrder,
  type CompleteRequest,
  type Join,
  type OutputHeader,
  type PathInfo,
  type Ping,
} from '../../src/protocol/gen/runner.ts';
import { JobOwnership } from '../../src/protocol/job-ownership.ts';
import { PROTOCOL_VERSION, type ControlSession, type RunnerHandlers } from '../../src/protocol/server.ts';
import { instantiate, MK_DRV, realise, runNix } from '../helpers/nix.ts';
import { collectLogs, hostNars, startRunnerServer } from '../helpers/runner-server.ts';

const TOKEN = 'agent-test-token-0123456789abcdef';
const MACHINE = 'agent-test-machine';

// ---- a minimal runner side ---------------------------------------------------

const joins: Join[] = [];
const pings: Ping[] = [];
const accepted: string[] = [];
const statuses: { jobId: string; busy: StepBusy }[] = [];
const logs = new Map<string, Buffer>();
const uploads: { header: OutputHeader; sha256: string; size: number }[] = [];
const completes = new Map<string, CompleteRequest>();
const requisitesOf = new Map<string, PathInfo[]>();
const narsServed: string[] = [];
let current: ControlSession | undefined;

async function waitFor<T>(what: string, f: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const handlers: RunnerHandlers = {
  async control(session) {
    joins.push(session.join);
    current = session;
    for await (const m of session.messages) {
      if (m.kind?.$case === 'ping') pings.push(m.kind.value);
      if (m.kind?.$case === 'jobAccepted') accepted.push(m.kind.value.jobId);
      if (m.kind?.$case === 'stepStatus') statuses.push({ jobId: m.kind.value.jobId, busy: m.kind.value.busy });
    }
  },
  async fetchRequisites(_ctx, req) {
    // Slow for the main job: its preparing phase lasts long enough to be reported.
    if (req.jobId === 'job-main') await new Promise((r) => setTimeout(r, 400));
    return { requisites: requisitesOf.get(req.jobId) ?? [] };
  },
  fetchNar: (_ctx, req) => hostNars(req, (p) => narsServed.push(p)),
  async hasPath() {
    return { present: false };
  },
  async stepStatus() {
    throw new Error('builders report phases on the control stream');
  },
  streamLog: collectLogs(logs),
  async uploadOutput(_ctx, header, data) {
    const h = createHash('sha256');
    let size = 0;
    for await (const d of data) {
      expect(d.length).toBeLessThanOrEqual(64 * 1024);
      h.update(d);
      size += d.length;
    }
    const sha256 = h.digest('hex');
    uploads.push({ header, sha256, size });
    return { bytesReceived: size, verified: size === Number(header.narSize) && parseHash(`sha256:${sha256}`).equals(parseHash(header.narHash)) };
  },
  async complete(_ctx, req) {
    completes.set(req.jobId, req);
    return {};
  },
};

// ---- fixtures -------------------------------------------------------------------

let dir: string;
let server: Server;
let port: number;
let agent: BuilderAgent;
const ownership = new JobOwnership();

async function pathInfos(paths: string[]): Promise<PathInfo[]> {
  const infos = new Map((await queryPathInfos(hostStore, paths)).map((i) => [i.path, i]));
  return exportOrder(infos.keys(), (p) => infos.get(p)!.references).map((p) => {
    const i = infos.get(p)!;
    return { storePath: p, narHash: i.narHash.format('base32'), narSize: i.narSize, references: i.references, deriver: i.deriver ?? undefined, ca: undefined };
  });
}

async function lines(cmd: string, args: string[]): Promise<string[]> {
  return (await runNix(cmd, args)).stdout.toString('utf8').split('\n').filter(Boolean);
}

async function order(jobId: string, drvPath: string, limits: Partial<NonNullable<BuildOrder['limits']>> = {}): Promise<BuildOrder> {
  const drv = await readFile(drvPath);
  const parsed = parseDerivation(drv.toString('utf8'));
  return {
    jobId,
    drvPath,
    drv,
    outputs: [...parsed.outputs].map(([name, o]) => ({ name, path: o.path || undefined })),
    limits: { maxSilentTimeS: 0, buildTimeoutS: 0, maxLogSize: 0, maxOutputSize: 0, ...limits },
    resolved: undefined,
    // Left to FetchRequisites here (the runner's orders carry them: test/e2e).
    requisites: [],
    requisitesIncluded: false,
  };
}

/** Processes running the sleepy builder. */
async function sleepers(): Promise<number> {
  const ps = await runNix('/bin/sh', ['-c', 'ps -eo args | grep -c "^/bin/sleep 60.25$" || true']);
  return Number(ps.stdout.toString().trim());
}

async function send(o: BuildOrder): Promise<void> {
  ownership.assign(o.jobId, MACHINE);
  await current!.send({ kind: { $case: 'build', value: o } });
}

const nonce = randomUUID();
const EXPR = `let ${MK_DRV}
  dep = mk { name = "agent-dep"; script = "echo dep-${nonce} > $out"; };
in {
  main = mk { name = "agent-main"; deps = [ dep ]; script = "echo building main; echo line two >&2; /bin/sh -c 'read x < $deps; echo $x' > $out; echo main-${nonce} >> $out"; };
  fail = mk { name = "agent-fail"; script = "echo about to fail ${nonce}; exit 1"; };
  slow = mk { name = "agent-slow"; script = "echo slow ${nonce}; /bin/sleep 2; echo slow > $out"; };
  sleepy = mk { name = "agent-sleep"; script = "echo sleeping ${nonce}; exec /bin/sleep 60.25"; };
}`;
let mainDrv: string;
let failDrv: string;
let sleepDrv: string;
let slowDrv: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'hydrant-agent-'));
  let tokenFile: string;
  ({ server, port, tokenFile } = await startRunnerServer(dir, `${TOKEN}\n`, { ownership, handlers, pingIntervalMs: 200 }));

  [mainDrv, failDrv, sleepDrv, slowDrv] = (await instantiate(EXPR, ['main', 'fail', 'sleepy', 'slow'])) as [string, string, string, string];
  // The runner's store holds the input already built.
  const main = parseDerivation(await readFile(mainDrv, 'utf8'));
  const depDrv = [...main.inputDrvs.keys()][0]!;
  const [depOut] = await realise([depDrv]);
  // The .drv closure minus the ordered .drv itself (the agent adds it from the order's bytes), plus the input's output.
  const drvClosure = (await lines('nix-store', ['--query', '--requisites', mainDrv])).filter((p) => p !== mainDrv);
  const depClosure = await lines('nix-store', ['--query', '--requisites', depOut!]);
  requisitesOf.set('job-main', await pathInfos([...new Set([...drvClosure, ...depClosure])]));
  requisitesOf.set('job-fail', await pathInfos([failDrv]));
  requisitesOf.set('job-sleep', await pathInfos([sleepDrv]));
  requisitesOf.set('job-slow', await pathInfos([slowDrv]));

  const store = await PrivateStore.create(path.join(dir, 'store'));
  const config = validateBuilderConfig({
    server: `127.0.0.1:${port}`,
    tokenFile,
    machineId: MACHINE,
    maxJobs: 2,
    storeDir: store.dir,
    buildDir: dir,
    reconnectMinMs: 100,
    reconnectMaxMs: 400,
  });
  agent = new BuilderAgent({ config, token: TOKEN, store });
  agent.start();
  await agent.waitJoined();
}, 120_000);

afterAll(async () => {
  await agent?.shutdown(1000);
  await new Promise<void>((r) => server.tryShutdown(() => r()));
  await rm(dir, { recursive: true, force: true });
});

describe('BuilderAgent against a real grpc-js runner server', () => {
  it('joins with its facts and pings', async () => {
    const j = joins[0]!;
    expect(j.protocolVersion).toBe(PROTOCOL_VERSION);
    expect(j.machineId).toBe(MACHINE);
    expect(j.systems).toEqual([hostSystem(), 'builtin']);
    expect(j.supportedFeatures).toEqual(['ca-derivations']);
    expect(j.maxJobs).toBe(2);
    expect(j.cpuCount).toBeGreaterThan(0);
    expect(Number(j.totalMemoryBytes)).toBeGreaterThan(0);
    expect(j.nixVersion).toMatch(/^2\.\d+/);
    expect(j.storeDir).toBe('/nix/store');
    // The connection actor is joined and pinging.
    expect(agent.connectionState).toBe('connected');
    expect(agent.joins).toBe(1);
    await waitFor('two pings', () => pings.length >= 2, 5000);
    expect(pings[0]!.storeFreePercent).toBeGreaterThan(0);
  });

  it('imports inputs into its private store, builds, streams the log, uploads the output and completes', async () => {
    await send(await order('job-main', mainDrv));
    const done = await waitFor('job-main complete', () => completes.get('job-main'), 90_000);
    expect(done.errorMsg).toBe('');
    expect(done.state).toBe(ResultState.RESULT_STATE_SUCCESS);
    expect(accepted).toContain('job-main');
    // Phases in order, each once: building always, the others when they lasted
    // (preparing did: the requisites took 400 ms).
    const busy = statuses.filter((s) => s.jobId === 'job-main').map((s) => s.busy);
    const phases = [
      StepBusy.STEP_BUSY_PREPARING,
      StepBusy.STEP_BUSY_SENDING_INPUTS,
      StepBusy.STEP_BUSY_BUILDING,
      StepBusy.STEP_BUSY_POST_PROCESSING,
      StepBusy.STEP_BUSY_RECEIVING_OUTPUTS,
    ];
    expect(busy[0]).toBe(StepBusy.STEP_BUSY_PREPARING);
    expect(busy).toContain(StepBusy.STEP_BUSY_BUILDING);
    expect(busy.map((b) => phases.indexOf(b))).toEqual([...new Set(busy.map((b) => phases.indexOf(b)))].sort((a, b) => a - b));
    // Only missing inputs were fetched, the ordered .drv came from the order.
    expect(narsServed).not.toContain(mainDrv);
    expect(narsServed.length).toBe(requisitesOf.get('job-main')!.length);
    const log = logs.get('job-main')!.toString('utf8');
    expect(log).toContain('building main');
    expect(log).toContain('line two');

    // The same build on the host gives the NAR hash the runner received.
    const [out] = await realise([mainDrv]);
    const [hostInfo] = JSON.parse((await runNix('nix', ['path-info', '--json', '--closure-size', out!])).stdout.toString('utf8')) as {
      narHash: string;
      narSize: number;
      closureSize: number;
    }[];
    const up = uploads.find((u) => u.header.jobId === 'job-main')!;
    expect(up.header.storePath).toBe(out);
    expect(up.header.outputName).toBe('out');
    expect(up.header.deriver).toBe(mainDrv);
    expect(parseHash(`sha256:${up.sha256}`).equals(parseHash(hostInfo!.narHash))).toBe(true);
    expect(up.size).toBe(hostInfo!.narSize);
    expect(done.outputs).toHaveLength(1);
    expect(done.outputs[0]!.storePath).toBe(out);
    expect(parseHash(done.outputs[0]!.narHash).equals(parseHash(hostInfo!.narHash))).toBe(true);
    expect(Number(done.outputs[0]!.narSize)).toBe(hostInfo!.narSize);
    expect(Number(done.outputs[0]!.closureSize)).toBe(hostInfo!.closureSize);
    expect(done.nixSupport?.failed).toBe(false);
    expect(Number(done.timings!.stopTime)).toBeGreaterThanOrEqual(Number(done.timings!.startTime));
    // The host store's copy is untouched by the agent: it was built separately here.
    expect(agent.runningJobs).toEqual([]);
  }, 120_000);

  it('refuses to upload an output over maxOutputSize', async () => {
    const before = uploads.length;
    requisitesOf.set('job-big', requisitesOf.get('job-main')!);
    await send(await order('job-big', mainDrv, { maxOutputSize: 8 }));
    const done = await waitFor('job-big complete', () => completes.get('job-big'), 60_000);
    expect(done.state).toBe(ResultState.RESULT_STATE_NAR_SIZE_LIMIT_EXCEEDED);
    expect(uploads.length).toBe(before);
  }, 60_000);

  it('reports a failing build as BUILD_FAILURE', async () => {
    await send(await order('job-fail', failDrv));
    const done = await waitFor('job-fail complete', () => completes.get('job-fail'), 60_000);
    expect(done.state).toBe(ResultState.RESULT_STATE_BUILD_FAILURE);
    expect(done.errorMsg).not.toBe('');
    expect(done.outputs).toEqual([]);
    expect(logs.get('job-fail')?.toString('utf8')).toContain('about to fail');
  }, 60_000);

  it('kills a build on Abort and reports nothing more for it', async () => {
    await send(await order('job-sleep', sleepDrv));
    await waitFor('sleep building', () => statuses.some((s) => s.jobId === 'job-sleep' && s.busy === StepBusy.STEP_BUSY_BUILDING), 60_000);
    await waitFor('sleep log', () => logs.get('job-sleep')?.toString('utf8').includes('sleeping'), 30_000).catch(() => undefined);
    await waitFor('sleep running', async () => (await sleepers()) > 0, 10_000);
    await current!.send({ kind: { $case: 'abort', value: { jobId: 'job-sleep', reason: 'test' } } });
    await waitFor('job gone', () => !agent.runningJobs.includes('job-sleep'), 10_000);
    // The builder process is gone too.
    await waitFor('sleep killed', async () => (await sleepers()) === 0, 10_000);
    // A job ordered after the kill completes; by then a report of the killed one would have come
    // first (its process had already exited), so none is coming: no sleep needed to show it.
    requisitesOf.set('job-after-abort', requisitesOf.get('job-fail')!);
    await send(await order('job-after-abort', failDrv));
    const after = await waitFor('job after abort', () => completes.get('job-after-abort'), 60_000);
    expect(after.state).toBe(ResultState.RESULT_STATE_BUILD_FAILURE);
    expect(completes.has('job-sleep')).toBe(false);
  }, 90_000);

  it('reconnects and re-joins with the same machine id when the stream is killed', async () => {
    const n = joins.length;
    const old = current!;
    old.fail(status.UNAVAILABLE, 'runner restarting');
    const joined = agent.joins;
    await waitFor('re-join', () => joins.length > n, 10_000);
    expect(joins.at(-1)!.machineId).toBe(MACHINE);
    // The connection actor went connected → backoff → connecting → joining → connected.
    await waitFor('connected again', () => agent.connectionState === 'connected' && agent.joins > joined, 10_000);
    expect(current!.sessionId).not.toBe(old.sessionId);
    // Calls work in the new session: a job ordered now completes.
    const failAgain = 'job-fail-2';
    requisitesOf.set(failAgain, requisitesOf.get('job-fail')!);
    await send(await order(failAgain, failDrv));
    const done = await waitFor('job after reconnect', () => completes.get(failAgain), 60_000);
    expect(done.state).toBe(ResultState.RESULT_STATE_BUILD_FAILURE);
  }, 60_000);

  it('keeps a running job across a reconnect and reports it in the new session', async () => {
    await send(await order('job-slow', slowDrv));
    await waitFor('slow building', () => statuses.some((s) => s.jobId === 'job-slow' && s.busy === StepBusy.STEP_BUSY_BUILDING), 30_000);
    const n = joins.length;
    const old = current!;
    old.fail(status.UNAVAILABLE, 'network blip');
    await waitFor('re-join', () => joins.length > n, 10_000);
    const done = await waitFor('job-slow complete', () => completes.get('job-slow'), 60_000);
    expect(done.state).toBe(ResultState.RESULT_STATE_SUCCESS);
    expect(uploads.some((u) => u.header.jobId === 'job-slow')).toBe(true);
    expect(current!.sessionId).not.toBe(old.sessionId);
  }, 90_000);

  it('stops for good when the runner refuses its token: onFatal once, the connection actor ends in fatal, no re-dial', async () => {
    const n = joins.length;
    const fatal: HydrantError[] = [];
    const config = validateBuilderConfig({
      server: `127.0.0.1:${port}`,
      tokenFile: path.join(dir, 'wrong-token'),
      machineId: 'agent-test-refused',
      storeDir: dir,
      buildDir: dir,
      reconnectMinMs: 50,
      reconnectMaxMs: 50,
    });
    const refused = new BuilderAgent({ config, token: 'not-the-token-0123456789abcdef', store: hostStore, onFatal: (e) => fatal.push(e) });
    try {
      refused.start();
      await waitFor('fatal', () => fatal.length > 0, 10_000);
      expect(fatal[0]).toBeInstanceOf(BuilderUnauthenticatedError);
      expect(fatal[0]!.message).toContain('wrong-token');
      expect(refused.connectionState).toBe('fatal');
      await new Promise((r) => setTimeout(r, 300));
      expect(fatal).toHaveLength(1);
      expect(refused.joins).toBe(0);
      expect(joins.length).toBe(n);
    } finally {
      await refused.shutdown(0);
    }
    expect(refused.connectionState).toBe('fatal');
  });
});
