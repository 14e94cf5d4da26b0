import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServerCredentials, status, type Server, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors/index.ts';
import { CLIENT_CERTIFICATE_MESSAGE, TokenAuth, UNAUTHENTICATED_MESSAGE } from '../../src/protocol/auth.ts';
import { HasPathRequest, Join, UploadReceipt, type RunnerMessage } from '../../src/protocol/gen/runner.ts';
import { JobOwnership } from '../../src/protocol/job-ownership.ts';
import { RejectionLog, type Rejection } from '../../src/protocol/rejection-log.ts';
import { createBuilderClient, createRunnerServer, listen, PROTOCOL_VERSION, type RunnerHandlers } from '../../src/protocol/server.ts';
import { certificateFailure, channelCredentials, serverCredentials, type ClientTlsFiles } from '../../src/protocol/tls.ts';
import { makeTestCerts, type TestCerts } from '../helpers/certs.ts';

/**
 * TLS and mutual TLS on the builder protocol, with certificates made by the
 * real `openssl` CLI and real gRPC over TCP: a builder's Join succeeds only
 * when each side accepts the other.
 */

const TOKEN = 'tls-test-token-0123456789abcdef';

const handlers: RunnerHandlers = {
  async control(session) {
    for await (const _ of session.messages) {
      // joined; nothing else to do
    }
  },
  fetchRequisites: async () => ({ requisites: [] }),
  async *fetchNar() {},
  hasPath: async () => ({ present: false }),
  stepStatus: async () => ({}),
  streamLog: async () => ({ bytesReceived: 0 }),
  uploadOutput: async () => UploadReceipt.fromPartial({}),
  complete: async () => ({}),
};

let certs: TestCerts;
let dir: string;
const servers: Server[] = [];
const rejected: { peer: string; reason: string; method: string }[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'hydrant-tls-'));
  certs = makeTestCerts(dir);
});

afterAll(() => {
  for (const s of servers) s.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  rejected.length = 0;
});

async function startServer(creds: ServerCredentials, requireClientCertificate = false): Promise<string> {
  const server = createRunnerServer({
    auth: new TokenAuth([TOKEN]),
    ownership: new JobOwnership(),
    handlers,
    requireClientCertificate,
    onRejected: (peer, reason, method) => rejected.push({ peer, reason, method }),
  });
  servers.push(server);
  const port = await listen(server, '127.0.0.1:0', creds);
  return `127.0.0.1:${port}`;
}

/** Dials, joins, and resolves to the Joined session id or the call's error. */
async function dial(address: string, files: ClientTlsFiles | null, token = TOKEN): Promise<{ sessionId: string } | ServiceError> {
  const c = createBuilderClient(address, token, undefined, files ? channelCredentials(files) : undefined);
  try {
    return await new Promise((resolve) => {
      const stream = c.client.control({ deadline: Date.now() + 15_000 });
      stream.on('data', (m: RunnerMessage) => {
        if (m.kind?.$case === 'joined') {
          resolve({ sessionId: m.kind.value.sessionId });
          stream.cancel();
        }
      });
      stream.on('error', (e: ServiceError) => resolve(e));
      stream.write({ kind: { $case: 'join', value: Join.fromPartial({ protocolVersion: PROTOCOL_VERSION, machineId: 'tls-builder' }) } });
    });
  } finally {
    c.close();
  }
}

function ca(): ClientTlsFiles['ca'] {
  return { what: '--tls-ca', path: certs.caCert };
}
function client(cert: string, key: string): Pick<ClientTlsFiles, 'cert' | 'key'> {
  return { cert: { what: '--cert', path: cert }, key: { what: '--key', path: key } };
}

describe('TLS', () => {
  let address: string;
  beforeAll(async () => {
    address = await startServer(serverCredentials({ cert: { what: 'certFile', path: certs.serverCert }, key: { what: 'keyFile', path: certs.serverKey } }));
  });

  it('a builder trusting the CA that signed the runner certificate joins', async () => {
    const r = await dial(address, { ca: ca() });
    expect(r).toHaveProperty('sessionId');
    expect((r as { sessionId: string }).sessionId).not.toBe('');
  });

  it('by name as well as by address (the certificate names both)', async () => {
    expect(await dial(address.replace('127.0.0.1', 'localhost'), { ca: ca() })).toHaveProperty('sessionId');
  });

  it('a builder trusting another CA refuses the runner, and says why', async () => {
    const r = (await dial(address, { ca: { what: '--tls-ca', path: certs.otherCaCert } })) as ServiceError;
    expect(r.code).toBe(status.UNAVAILABLE);
    expect(certificateFailure(r.details)).toBe('unable to verify the first certificate');
  });

  it('a plain builder never reaches a TLS runner', async () => {
    const r = (await dial(address, null)) as ServiceError;
    expect(r.code).toBe(status.UNAVAILABLE);
  });

  it('the bearer token is still required over TLS; the refusal is reported without the token', async () => {
    const wrong = 'wrong-token-must-not-be-logged';
    const r = (await dial(address, { ca: ca() }, wrong)) as ServiceError;
    expect(r.code).toBe(status.UNAUTHENTICATED);
    expect(r.details).toBe(UNAUTHENTICATED_MESSAGE);
    expect(rejected).toEqual([{ peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), reason: 'unknown bearer token', method: 'Control' }]);
    expect(JSON.stringify(rejected)).not.toContain(wrong);
  });
});

describe('a TLS builder and a plain runner', () => {
  it('the builder finds that the runner speaks no TLS', async () => {
    const address = await startServer(ServerCredentials.createInsecure());
    const r = (await dial(address, { ca: ca() })) as ServiceError;
    expect(r.code).toBe(status.UNAVAILABLE);
    expect(certificateFailure(r.details)).toBe('the runner does not speak TLS (is grpcTls set on the runner?)');
  });
});

describe('an expired runner certificate', () => {
  it('is refused by the builder, which says so', async () => {
    const address = await startServer(
      serverCredentials({ cert: { what: 'certFile', path: certs.expiredServerCert }, key: { what: 'keyFile', path: certs.expiredServerKey } }),
    );
    const r = (await dial(address, { ca: ca() })) as ServiceError;
    expect(r.code).toBe(status.UNAVAILABLE);
    expect(certificateFailure(r.details)).toBe('certificate has expired');
  });
});

describe('mutual TLS', () => {
  let address: string;
  beforeAll(async () => {
    address = await startServer(
      serverCredentials({
        cert: { what: 'certFile', path: certs.serverCert },
        key: { what: 'keyFile', path: certs.serverKey },
        clientCa: { what: 'clientCaFile', path: certs.caCert },
      }),
      true,
    );
  });

  it('a builder with a certificate the client CA signed joins', async () => {
    expect(await dial(address, { ca: ca(), ...client(certs.clientCert, certs.clientKey) })).toHaveProperty('sessionId');
    expect(rejected).toEqual([]);
  });

  it('a builder without a client certificate is refused, with its valid token, and the runner reports it', async () => {
    const r = (await dial(address, { ca: ca() })) as ServiceError;
    expect(r.code).toBe(status.UNAUTHENTICATED);
    expect(r.details).toBe(CLIENT_CERTIFICATE_MESSAGE);
    expect(rejected).toEqual([{ peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), reason: CLIENT_CERTIFICATE_MESSAGE, method: 'Control' }]);
  });

  it('a builder whose certificate another CA signed is refused', async () => {
    const r = (await dial(address, { ca: ca(), ...client(certs.foreignClientCert, certs.foreignClientKey) })) as ServiceError;
    expect(r.code).toBe(status.UNAUTHENTICATED);
    expect(r.details).toBe(CLIENT_CERTIFICATE_MESSAGE);
    expect(rejected.map((x) => x.reason)).toEqual([CLIENT_CERTIFICATE_MESSAGE]);
  });

  it('every call of an unverified connection is refused, not only the join', async () => {
    const c = createBuilderClient(address, TOKEN, undefined, channelCredentials({ ca: ca() }));
    try {
      const e = await new Promise<ServiceError | null>((resolve) => c.client.hasPath(HasPathRequest.fromPartial({ jobId: '1.1' }), (err) => resolve(err)));
      expect(e?.code).toBe(status.UNAUTHENTICATED);
      expect(rejected.map((x) => x.method)).toEqual(['HasPath']);
    } finally {
      c.close();
    }
  });
});

describe('TLS files', () => {
  it('a key file readable by others is refused, naming the setting and the file', () => {
    const loose = join(dir, 'loose.key');
    copyFileSync(certs.serverKey, loose);
    chmodSync(loose, 0o644);
    const load = () => serverCredentials({ cert: { what: 'grpcTls.certFile', path: certs.serverCert }, key: { what: 'grpcTls.keyFile', path: loose } });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(`grpcTls.keyFile: ${loose} is readable by others (mode 644); chmod 600 it`);
    expect(() => channelCredentials({ ca: ca(), ...client(certs.clientCert, loose) })).toThrow(`--key: ${loose} is readable by others`);
  });

  it('a missing file or one that is not a certificate is refused, naming the setting', () => {
    expect(() => channelCredentials({ ca: { what: '--tls-ca (tlsCaFile)', path: join(dir, 'nope.crt') } })).toThrow(
      `--tls-ca (tlsCaFile): cannot read ${join(dir, 'nope.crt')}: ENOENT`,
    );
    expect(() => channelCredentials({ ca: { what: '--tls-ca', path: certs.clientKey } })).toThrow(`--tls-ca: ${certs.clientKey} is not a PEM certificate`);
  });
});

describe('RejectionLog', () => {
  it('logs the first refusals from a host at once, then only counts them until its window passes', () => {
    let now = 0;
    const lines: Rejection[] = [];
    const log = new RejectionLog((r) => lines.push(r), 2, 10_000, () => now);
    log.record('10.0.0.1:4000', 'unknown bearer token', 'Control');
    log.record('10.0.0.1:4001', 'unknown bearer token', 'Control');
    log.record('10.0.0.1:4002', 'unknown bearer token', 'Control');
    log.record('10.0.0.2:5000', 'no bearer token', 'HasPath');
    now = 5_000;
    log.record('10.0.0.1:4003', 'unknown bearer token', 'Control');
    now = 10_000;
    log.record('10.0.0.1:4004', 'unknown bearer token', 'Control');
    expect(lines).toEqual([
      { peer: '10.0.0.1:4000', reason: 'unknown bearer token', method: 'Control', suppressed: 0 },
      { peer: '10.0.0.1:4001', reason: 'unknown bearer token', method: 'Control', suppressed: 0 },
      { peer: '10.0.0.2:5000', reason: 'no bearer token', method: 'HasPath', suppressed: 0 },
      { peer: '10.0.0.1:4004', reason: 'unknown bearer token', method: 'Control', suppressed: 2 },
    ]);
  });
});
