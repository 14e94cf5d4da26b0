import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Server } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLIENT_CERTIFICATE_MESSAGE, TokenAuth } from '../../src/protocol/auth.ts';
import { JobOwnership } from '../../src/protocol/job-ownership.ts';
import { createRunnerServer, listen, type RunnerHandlers } from '../../src/protocol/server.ts';
import { serverCredentials } from '../../src/protocol/tls.ts';
import { makeTestCerts, type TestCerts } from '../helpers/certs.ts';
import { runCli, startCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { buildRow, joined, startBuilder, startRunner, submit, useFleet, type CliProcess, type RunnerProcess } from '../helpers/fleet.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * TLS on the builder protocol between real processes: `hydrant serve` with
 * grpcTls (mutual, with clientCaFile) and `hydrant builder --tls-ca --cert
 * --key`, certificates made by openssl. A refused builder exits 1 with one
 * line naming what to fix; the runner logs each refusal without the token.
 */

const REJECTED = /"msg":"builder authentication rejected"/;

/** The runner's refusal lines, parsed. */
function rejections(runner: CliProcess): { peer: string; reason: string; method: string }[] {
  return runner
    .output()
    .split('\n')
    .filter((l) => REJECTED.test(l))
    .map((l) => JSON.parse(l) as { peer: string; reason: string; method: string });
}

/** Runs a builder that must give up; returns its exit code and output. */
async function refusedBuilder(args: string[]): Promise<{ code: number | null; output: string }> {
  const r = await runCli(['builder', '--machine-id', `refused-${randomBytes(3).toString('hex')}`, ...args]);
  return { code: r.code, output: r.stderr + r.stdout };
}

describe('a runner serving the builder protocol over mutual TLS', () => {
  const { db, dir, procs } = useFleet('tls');
  let certs: TestCerts;
  let runner: RunnerProcess;
  let server: string;

  beforeAll(async () => {
    certs = makeTestCerts(join(dir));
    runner = await startRunner(
      dir,
      db.url,
      `[grpcTls]\ncertFile = "${certs.serverCert}"\nkeyFile = "${certs.serverKey}"\nclientCaFile = "${certs.caCert}"\n`,
    );
    procs.push(runner.proc);
    server = `localhost:${runner.port}`;
  }, 120_000);

  it('says it serves mutual TLS', () => {
    expect(runner.proc.output()).toMatch(/"tls":"mutual","port":\d+,"msg":"builder protocol listening"/);
  });

  it('a builder with the CA and a client certificate joins and builds', async () => {
    const b = startBuilder(dir, server, runner.tokenFile, 'tls-b1', `tlsCaFile = "${certs.caCert}"\ncertFile = "${certs.clientCert}"\nkeyFile = "${certs.clientKey}"`);
    procs.push(b);
    await joined(runner.proc, ['tls-b1']);
    const file = join(dir, 'release.nix');
    const nonce = randomBytes(4).toString('hex');
    writeFileSync(file, `{ }: let ${MK_DRV} in { hello = mk { name = "tls-${nonce}"; script = "echo over tls > $out"; }; }`);
    const { hello: id } = await submit(db.url, file, 'tls');
    await waitFor(async () => (await buildRow(db.pool, id!)).finished === 1, 90_000, 'the build to finish');
    expect((await buildRow(db.pool, id!)).buildstatus).toBe(0);
    expect(rejections(runner.proc)).toEqual([]);
  }, 150_000);

  it('a builder without a client certificate is refused: it exits 1 naming --cert/--key, the runner logs the refusal', async () => {
    const r = await refusedBuilder(['--server', server, '--token-file', runner.tokenFile, '--tls-ca', certs.caCert]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`hydrant: BUILDER_UNAUTHENTICATED: the runner at ${server} requires a client certificate: set --cert and --key (certFile, keyFile)\n`);
    await runner.proc.waitFor(REJECTED);
    expect(rejections(runner.proc).at(-1)).toMatchObject({ peer: expect.stringMatching(/^(127\.0\.0\.1|::1|::ffff:127\.0\.0\.1):\d+$/), reason: CLIENT_CERTIFICATE_MESSAGE });
  }, 60_000);

  it('a builder whose certificate another CA signed is refused', async () => {
    const before = rejections(runner.proc).length;
    const r = await refusedBuilder([
      '--server', server, '--token-file', runner.tokenFile, '--tls-ca', certs.caCert, '--cert', certs.foreignClientCert, '--key', certs.foreignClientKey,
    ]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(
      `hydrant: BUILDER_UNAUTHENTICATED: the runner at ${server} refused the client certificate ${certs.foreignClientCert} (--cert): ${CLIENT_CERTIFICATE_MESSAGE}\n`,
    );
    await waitFor(() => rejections(runner.proc).length > before, 10_000, 'the runner to log the refusal');
    expect(rejections(runner.proc).at(-1)!.reason).toBe(CLIENT_CERTIFICATE_MESSAGE);
  }, 60_000);

  it('a builder with a wrong token exits 1 naming --token-file at once; the runner logs it without the token', async () => {
    const wrong = `wrong-${randomBytes(12).toString('hex')}`;
    const tokenFile = join(dir, 'wrong-token');
    writeFileSync(tokenFile, wrong);
    const before = rejections(runner.proc).length;
    const r = await refusedBuilder([
      '--server', server, '--token-file', tokenFile, '--tls-ca', certs.caCert, '--cert', certs.clientCert, '--key', certs.clientKey,
    ]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`hydrant: BUILDER_UNAUTHENTICATED: the runner at ${server} refused the token in ${tokenFile} (--token-file): missing or invalid bearer token\n`);
    // Given up after the first refusal: no retry lines.
    expect(r.output).not.toMatch(/control stream:/);
    await waitFor(() => rejections(runner.proc).length > before, 10_000, 'the runner to log the refusal');
    expect(rejections(runner.proc).slice(before)).toEqual([expect.objectContaining({ reason: 'unknown bearer token', method: 'Control' })]);
    expect(runner.proc.output()).not.toContain(wrong);
  }, 60_000);

  it('a builder trusting another CA refuses the runner and exits 1 naming --tls-ca', async () => {
    const r = await refusedBuilder(['--server', server, '--token-file', runner.tokenFile, '--tls-ca', certs.otherCaCert, '--cert', certs.clientCert, '--key', certs.clientKey]);
    expect(r.code).toBe(1);
    // The runner sends its chain with the CA it also uses for clients, hence OpenSSL's wording.
    const line = r.output.split('\n').find((l) => l.startsWith('hydrant: '));
    expect(line).toBe(
      `hydrant: RUNNER_CERTIFICATE_REFUSED: the runner at ${server} failed TLS verification against ${certs.otherCaCert} (--tls-ca): self-signed certificate in certificate chain`,
    );
  }, 60_000);

  it('a builder key readable by others is refused before dialling', async () => {
    const loose = join(dir, 'loose-client.key');
    copyFileSync(certs.clientKey, loose);
    chmodSync(loose, 0o644);
    const r = await refusedBuilder(['--server', server, '--token-file', runner.tokenFile, '--tls-ca', certs.caCert, '--cert', certs.clientCert, '--key', loose]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`hydrant: CONFIG_INVALID: --key (keyFile): ${loose} is readable by others (mode 644); chmod 600 it\n`);
  }, 60_000);
});

describe('a builder dialling a runner whose certificate has expired', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-tls-expired-'));
  let grpc: Server;
  let certs: TestCerts;

  afterAll(() => grpc?.forceShutdown());

  it('refuses it and exits 1 with the reason', async () => {
    certs = makeTestCerts(dir);
    const idle: RunnerHandlers = {
      control: async () => {},
      fetchRequisites: async () => ({ requisites: [] }),
      async *fetchNar() {},
      hasPath: async () => ({ present: false }),
      stepStatus: async () => ({}),
      streamLog: async () => ({ bytesReceived: 0 }),
      uploadOutput: async () => ({ bytesReceived: 0, verified: false }),
      complete: async () => ({}),
    };
    const token = join(dir, 'token');
    writeFileSync(token, 'expired-test-token');
    grpc = createRunnerServer({ auth: new TokenAuth(['expired-test-token']), ownership: new JobOwnership(), handlers: idle });
    const port = await listen(
      grpc,
      '127.0.0.1:0',
      serverCredentials({ cert: { what: 'certFile', path: certs.expiredServerCert }, key: { what: 'keyFile', path: certs.expiredServerKey } }),
    );
    const r = await refusedBuilder(['--server', `localhost:${port}`, '--token-file', token, '--tls-ca', certs.caCert]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`hydrant: RUNNER_CERTIFICATE_REFUSED: the runner at localhost:${port} failed TLS verification against ${certs.caCert} (--tls-ca): certificate has expired\n`);
  }, 60_000);
});

describe('hydrant serve refuses unsafe builder-protocol settings at start', () => {
  // One database for the runners these tests start, one after the other.
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-tls-serve-'));

  it('a non-loopback grpcListen without TLS, in one line naming the keys', async () => {
    const config = join(dir, 'open.toml');
    writeFileSync(join(dir, 'token'), 'x');
    writeFileSync(config, `tokenPaths = ["${join(dir, 'token')}"]\ngrpcListen = "0.0.0.0:0"\nhydraDataDir = "${dir}"\n`);
    const r = await runCli(['serve', '--config', config]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `hydrant: CONFIG_INVALID: ${config}: grpcListen (--grpc-listen): 0.0.0.0:0 is not a loopback address: set grpcTls (certFile, keyFile) or, on a trusted network, grpcInsecure = true\n`,
    );
  });

  it('with grpcInsecure = true it serves plain gRPC off loopback, warning that tokens travel in clear', async () => {
    const sub = mkdtempSync(join(dir, 'insecure-'));
    const token = join(sub, 'token');
    writeFileSync(token, 'insecure-test-token');
    const config = join(sub, 'insecure.toml');
    writeFileSync(
      config,
      `dbUrl = "${db.url}"\nhydraDataDir = "${sub}"\ntokenPaths = ["${token}"]\ngrpcListen = "0.0.0.0:0"\ngrpcInsecure = true\nhttpListen = ""\nrootsDir = "${join(sub, 'roots')}"\n`,
    );
    const r = startCli(['serve', '--config', config]);
    try {
      await r.waitFor(/"tls":"off","port":\d+,"msg":"builder protocol listening"/, 60_000);
      expect(r.output()).toMatch(/"level":40,[^\n]*"listen":"0\.0\.0\.0:0","msg":"builder protocol without TLS off loopback \(grpcInsecure = true\): tokens and NARs cross the network in clear"/);
    } finally {
      r.child.kill('SIGTERM');
      await r.exited;
    }
  }, 90_000);

  it('a grpcTls key file readable by others', async () => {
    const certs = makeTestCerts(join(dir));
    const loose = join(dir, 'loose-server.key');
    copyFileSync(certs.serverKey, loose);
    chmodSync(loose, 0o640);
    const token = join(dir, 'token');
    const config = join(dir, 'loose.toml');
    writeFileSync(
      config,
      `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\ntokenPaths = ["${token}"]\ngrpcListen = "127.0.0.1:0"\nhttpListen = ""\nrootsDir = "${join(dir, 'roots')}"\n` +
        `[grpcTls]\ncertFile = "${certs.serverCert}"\nkeyFile = "${loose}"\n`,
    );
    const r = startCli(['serve', '--config', config]);
    expect(await r.exited).toBe(1);
    expect(r.output()).toContain(`hydrant: CONFIG_INVALID: grpcTls.keyFile: ${loose} is readable by others (mode 640); chmod 600 it\n`);
  }, 60_000);
});
