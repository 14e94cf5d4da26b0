import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { credentials, status, type ClientDuplexStream, type Server, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UNAUTHENTICATED_MESSAGE } from '../../src/protocol/auth.ts';
import {
  Join,
  Ping,
  RunnerClient,
  type BuilderMessage,
  type RunnerMessage,
  type UploadOutputMessage,
} from '../../src/protocol/gen/runner.ts';
import { JobOwnership } from '../../src/protocol/job-ownership.ts';
import {
  createBuilderClient,
  PROTOCOL_VERSION,
  type BuilderClient,
  type ControlSession,
  type RunnerHandlers,
} from '../../src/protocol/server.ts';
import { startRunnerServer } from '../helpers/runner-server.ts';

const TOKEN = 'builder-token-0123456789abcdef';
const CHUNK = 64 * 1024;
const UPLOAD_CHUNKS = 800; // 50 MiB

/** Counts every handler entry, so tests can show a refused call never reached one. */
const calls = new Map<string, number>();
function hit(name: string): void {
  calls.set(name, (calls.get(name) ?? 0) + 1);
}

const pings: { machineId: string; ping: Ping }[] = [];
/** Chunks the client has handed to grpc-js, and the most the server had not yet consumed. */
const upload = { sent: 0, received: 0, maxInFlight: 0 };

const handlers: RunnerHandlers = {
  async control(session: ControlSession) {
    hit('control');
    for await (const m of session.messages) {
      if (m.kind?.$case === 'ping') {
        pings.push({ machineId: session.machineId, ping: m.kind.value });
        await session.send({ kind: { $case: 'config', value: { pingIntervalMs: 1234, maxConcurrentDownloads: undefined } } });
      }
    }
  },
  async fetchRequisites() {
    hit('fetchRequisites');
    return { requisites: [] };
  },
  async *fetchNar() {
    hit('fetchNar');
  },
  async hasPath() {
    hit('hasPath');
    return { present: true };
  },
  async stepStatus() {
    hit('stepStatus');
    return {};
  },
  async streamLog(_ctx, _jobId, chunks) {
    hit('streamLog');
    let n = 0;
    for await (const c of chunks) n += c.data.length;
    return { bytesReceived: n };
  },
  async uploadOutput(_ctx, header, data) {
    hit('uploadOutput');
    const h = createHash('sha256');
    let n = 0;
    let i = 0;
    for await (const d of data) {
      upload.received++;
      upload.maxInFlight = Math.max(upload.maxInFlight, upload.sent - upload.received);
      h.update(d);
      n += d.length;
      // A consumer slower than the producer, so backpressure has to hold the client back.
      if (++i % 32 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    return { bytesReceived: n, verified: n === header.narSize && `sha256:${h.digest('hex')}` === header.narHash };
  },
  async complete() {
    hit('complete');
    return {};
  },
};

let dir: string;
let server: Server;
let address: string;
const ownership = new JobOwnership();
const open: { close(): void }[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'hydrant-grpc-'));
  let port: number;
  ({ server, port } = await startRunnerServer(dir, `  ${TOKEN}\n`, { ownership, handlers, pingIntervalMs: 500 }));
  address = `127.0.0.1:${port}`;
});

afterAll(async () => {
  for (const c of open) c.close();
  await new Promise<void>((r) => server.tryShutdown(() => r()));
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  calls.clear();
});

function builder(token = TOKEN): BuilderClient {
  const b = createBuilderClient(address, token);
  open.push(b);
  return b;
}

function unary<Res>(start: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res)));
  });
}

function nextMessage(stream: ClientDuplexStream<BuilderMessage, RunnerMessage>): Promise<RunnerMessage> {
  return new Promise((resolve, reject) => {
    const onData = (m: RunnerMessage): void => {
      stream.off('error', onError);
      resolve(m);
    };
    const onError = (e: Error): void => {
      stream.off('data', onData);
      reject(e);
    };
    stream.once('data', onData);
    stream.once('error', onError);
  });
}

function joinMessage(machineId: string): BuilderMessage {
  return {
    kind: {
      $case: 'join',
      value: Join.fromPartial({
        protocolVersion: PROTOCOL_VERSION,
        machineId,
        hostname: `${machineId}.example`,
        systems: ['x86_64-linux'],
        supportedFeatures: ['kvm', 'big-parallel'],
        maxJobs: 4,
        speedFactor: 2,
        cpuCount: 8,
        bogomips: 4800,
      }),
    },
  };
}

/** Joins as `machineId` and sets the session on the client; returns the open control stream. */
async function join(b: BuilderClient, machineId: string): Promise<ClientDuplexStream<BuilderMessage, RunnerMessage>> {
  const stream = b.client.control();
  stream.on('error', () => {});
  open.push({ close: () => stream.cancel() });
  stream.write(joinMessage(machineId));
  const reply = await nextMessage(stream);
  if (reply.kind?.$case !== 'joined') throw new Error(`expected joined, got ${reply.kind?.$case}`);
  expect(reply.kind.value.machineId).toBe(machineId);
  expect(reply.kind.value.sessionId).toMatch(/^[\w-]{20,}$/);
  b.setSession(reply.kind.value.sessionId);
  return stream;
}

function expectCode(p: Promise<unknown>, code: status): Promise<ServiceError> {
  return p.then(
    () => {
      throw new Error(`expected status ${code}, call succeeded`);
    },
    (err: ServiceError) => {
      expect(err.code).toBe(code);
      return err;
    },
  );
}

describe('builder protocol over a real grpc-js server', () => {
  it('joins and round-trips a ping on the control stream', async () => {
    const b = builder();
    const stream = await join(b, 'machine-ping');
    const ping = Ping.fromPartial({
      load1: 1.5,
      load5: 1.25,
      load15: 1,
      memoryUsedBytes: 3 * 2 ** 30,
      cpuPressure: { avg10: 12.5, avg60: 8, avg300: 4 },
      memoryPressure: { avg10: 1, avg60: 0.5, avg300: 0.25 },
      ioPressure: { avg10: 30, avg60: 20, avg300: 10 },
      buildDirFreePercent: 42.5,
      storeFreePercent: 17,
      transfers: { downloading: 2, uploading: 1, substituting: 0 },
    });
    stream.write({ kind: { $case: 'ping', value: ping } });
    const reply = await nextMessage(stream);
    expect(reply.kind).toEqual({ $case: 'config', value: { pingIntervalMs: 1234, maxConcurrentDownloads: undefined } });
    expect(pings.at(-1)).toEqual({ machineId: 'machine-ping', ping });
    expect(calls.get('control')).toBe(1);

    // The session id now authorises job-free calls... and ends with the stream.
    stream.end();
    await new Promise((r) => stream.once('end', r).resume());
    await expectCode(unary((cb) => b.client.hasPath({ jobId: 'x', storePath: '/nix/store/x' }, cb)), status.UNAUTHENTICATED);
  });

  it('refuses calls without a token or with a wrong one before any handler runs', async () => {
    const bare = new RunnerClient(address, credentials.createInsecure());
    open.push(bare);
    const wrong = builder('not-the-token');
    const short = builder('x');

    for (const client of [bare, wrong.client, short.client]) {
      const err = await expectCode(
        unary((cb) => client.hasPath({ jobId: 'job', storePath: '/nix/store/a' }, cb)),
        status.UNAUTHENTICATED,
      );
      expect(err.details).toBe(UNAUTHENTICATED_MESSAGE);
      expect(err.details).not.toContain('not-the-token');

      const ctl = client.control();
      const replied = nextMessage(ctl);
      ctl.write(joinMessage('intruder'));
      const e = await expectCode(replied, status.UNAUTHENTICATED);
      expect(e.details).toBe(UNAUTHENTICATED_MESSAGE);

      const up = await expectCode(
        new Promise((resolve, reject) => {
          const s = client.uploadOutput((err, res) => (err ? reject(err) : resolve(res)));
          s.write({ part: { $case: 'data', value: Buffer.alloc(10) } });
          s.end();
        }),
        status.UNAUTHENTICATED,
      );
      expect(up.details).toBe(UNAUTHENTICATED_MESSAGE);
    }
    expect(calls.size).toBe(0);
    expect(ownership.machineOfSession('intruder')).toBeUndefined();
  });

  it("refuses calls naming another machine's job", async () => {
    const a = builder();
    const b = builder();
    await join(a, 'machine-a');
    await join(b, 'machine-b');
    ownership.assign('job-a', 'machine-a');
    calls.clear();

    const req = { jobId: 'job-a', storePath: '/nix/store/aaaa-x' };
    await expectCode(unary((cb) => b.client.hasPath(req, cb)), status.PERMISSION_DENIED);
    await expectCode(unary((cb) => b.client.stepStatus({ jobId: 'job-a', busy: 30 }, cb)), status.PERMISSION_DENIED);
    await expectCode(
      new Promise((resolve, reject) => {
        const s = b.client.streamLog((err, res) => (err ? reject(err) : resolve(res)));
        s.write({ jobId: 'job-a', compression: 0, data: Buffer.from('forged log line\n') });
        s.end();
      }),
      status.PERMISSION_DENIED,
    );
    await expectCode(
      unary((cb) => b.client.complete({ jobId: 'job-a', state: 1, errorMsg: '', outputs: [], nixSupport: undefined, timings: undefined }, cb)),
      status.PERMISSION_DENIED,
    );
    // An unknown job is refused the same way.
    await expectCode(unary((cb) => a.client.hasPath({ ...req, jobId: 'job-nobody' }, cb)), status.PERMISSION_DENIED);
    expect(calls.size).toBe(0);

    // The owner is allowed, and completing releases the job.
    expect(await unary((cb) => a.client.hasPath(req, cb))).toEqual({ present: true });
    const receipt = await new Promise((resolve, reject) => {
      const s = a.client.streamLog((err, res) => (err ? reject(err) : resolve(res)));
      s.write({ jobId: 'job-a', compression: 0, data: Buffer.from('line 1\n') });
      s.write({ jobId: '', compression: 0, data: Buffer.from('line 2\n') });
      s.end();
    });
    expect(receipt).toEqual({ bytesReceived: 14 });
    await unary((cb) => a.client.complete({ jobId: 'job-a', state: 1, errorMsg: '', outputs: [], nixSupport: undefined, timings: undefined }, cb));
    expect(ownership.ownerOf('job-a')).toBeUndefined();
    await expectCode(unary((cb) => a.client.hasPath(req, cb)), status.PERMISSION_DENIED);
  });

  it('streams a 50 MiB upload in 64 KiB chunks with backpressure', async () => {
    const b = builder();
    await join(b, 'machine-upload');
    ownership.assign('job-upload', 'machine-upload');

    const hash = createHash('sha256');
    for (let i = 0; i < UPLOAD_CHUNKS; i++) hash.update(Buffer.alloc(CHUNK, i & 0xff));
    const narHash = `sha256:${hash.digest('hex')}`;

    const result = new Promise<unknown>((resolve, reject) => {
      const s = b.client.uploadOutput((err, res) => (err ? reject(err) : resolve(res)));
      const header: UploadOutputMessage = {
        part: {
          $case: 'header',
          value: {
            jobId: 'job-upload',
            outputName: 'out',
            storePath: '/nix/store/0000000000000000000000000000000a-big',
            narHash,
            narSize: CHUNK * UPLOAD_CHUNKS,
            references: [],
            deriver: undefined,
            ca: undefined,
            compression: 0,
          },
        },
      };
      s.write(header);
      let i = 0;
      const pump = (): void => {
        while (i < UPLOAD_CHUNKS) {
          upload.sent++;
          const ok = s.write({ part: { $case: 'data', value: Buffer.alloc(CHUNK, i & 0xff) } });
          i++;
          if (!ok) {
            s.once('drain', pump);
            return;
          }
        }
        s.end();
      };
      pump();
    });
    expect(await result).toEqual({ bytesReceived: CHUNK * UPLOAD_CHUNKS, verified: true });
    expect(upload.received).toBe(UPLOAD_CHUNKS);
    // The producer is never more than a few MiB ahead of the consumer: the
    // 800 chunks were never queued at once. (RSS is not asserted: every chunk
    // is freshly allocated and GC runs when it likes; measured ~2 MiB ahead.)
    expect(upload.maxInFlight).toBeGreaterThan(0);
    expect(upload.maxInFlight * CHUNK).toBeLessThan(8 * 1024 * 1024);
  }, 60_000);

  it('completes a job with its last upload, and only that job, only at the end', async () => {
    const b = builder();
    await join(b, 'machine-fold');
    const send = (msgs: UploadOutputMessage[]): Promise<unknown> =>
      new Promise((resolve, reject) => {
        const s = b.client.uploadOutput((err, res) => (err ? reject(err) : resolve(res)));
        for (const m of msgs) s.write(m);
        s.end();
      });
    const data = Buffer.from('nar bytes');
    const header = (jobId: string): UploadOutputMessage => ({
      part: {
        $case: 'header',
        value: {
          jobId,
          outputName: 'out',
          storePath: '/nix/store/0000000000000000000000000000000b-out',
          narHash: `sha256:${createHash('sha256').update(data).digest('hex')}`,
          narSize: data.length,
          references: [],
          deriver: undefined,
          ca: undefined,
          compression: 0,
        },
      },
    });
    const complete = (jobId: string): UploadOutputMessage => ({
      part: { $case: 'complete', value: { jobId, state: 1, errorMsg: '', outputs: [], nixSupport: undefined, timings: undefined } },
    });
    const chunk: UploadOutputMessage = { part: { $case: 'data', value: data } };
    ownership.assign('job-fold', 'machine-fold');
    ownership.assign('job-other', 'machine-fold');
    calls.clear();

    // Another job's completion, or data after the completion: refused, nothing completed.
    await expectCode(send([header('job-fold'), chunk, complete('job-other')]), status.INVALID_ARGUMENT);
    await expectCode(send([header('job-fold'), complete('job-fold'), chunk]), status.INVALID_ARGUMENT);
    expect(calls.get('complete')).toBeUndefined();
    expect(ownership.ownerOf('job-fold')).toBe('machine-fold');

    // The completion after the data completes the job once the output is in, and releases it.
    expect(await send([header('job-fold'), chunk, complete('job-fold')])).toEqual({ bytesReceived: data.length, verified: true });
    expect(calls.get('complete')).toBe(1);
    expect(ownership.ownerOf('job-fold')).toBeUndefined();
  });
});
