import { describe, expect, it } from 'vitest';
import { loadBuilderConfig } from '../../src/config/builder-config.ts';
import { isLoopbackListen, loadRunnerConfig } from '../../src/config/runner-config.ts';
import { ConfigError } from '../../src/errors/index.ts';
import { configFile } from '../helpers/config-file.ts';

const file = (text: string): string => configFile(text);

describe('runner grpcTls / grpcInsecure', () => {
  it('serves loopback without TLS, as the demo and tests do', () => {
    const c = loadRunnerConfig(file('tokenPaths = ["/t"]\ngrpcListen = "127.0.0.1:0"\n'), {}, {});
    expect(c.grpcTls).toBeUndefined();
    expect(c.grpcInsecure).toBe(false);
  });

  it('refuses a non-loopback grpcListen without TLS, naming the keys to set', () => {
    const p = file('tokenPaths = ["/t"]\ngrpcListen = "0.0.0.0:50051"\n');
    expect(() => loadRunnerConfig(p, {}, {})).toThrow(ConfigError);
    expect(() => loadRunnerConfig(p, {}, {})).toThrow(
      `${p}: grpcListen (--grpc-listen): 0.0.0.0:50051 is not a loopback address: set grpcTls (certFile, keyFile) or, on a trusted network, grpcInsecure = true`,
    );
  });

  it('accepts it with grpcTls, or with an explicit grpcInsecure = true', () => {
    const tls = loadRunnerConfig(
      file('tokenPaths = ["/t"]\ngrpcListen = "10.1.2.3:50051"\n[grpcTls]\ncertFile = "/c.crt"\nkeyFile = "/c.key"\nclientCaFile = "/ca.crt"\n'),
      {},
      {},
    );
    expect(tls.grpcTls).toEqual({ certFile: '/c.crt', keyFile: '/c.key', clientCaFile: '/ca.crt' });
    expect(loadRunnerConfig(file('tokenPaths = ["/t"]\ngrpcListen = "[::]:50051"\ngrpcInsecure = true\n'), {}, {}).grpcInsecure).toBe(true);
  });

  it('refuses grpcTls without its key file, unknown grpcTls keys, and grpcTls with grpcInsecure', () => {
    const p1 = file('[grpcTls]\ncertFile = "/c.crt"\n');
    expect(() => loadRunnerConfig(p1, {}, {})).toThrow(`${p1}: grpcTls.keyFile is required: set grpcTls.keyFile in the file`);
    const p2 = file('[grpcTls]\ncertFile = "/c.crt"\nkeyFile = "/k"\ncaFile = "/ca"\n');
    expect(() => loadRunnerConfig(p2, {}, {})).toThrow(`${p2}: unknown key caFile in grpcTls`);
    const p3 = file('grpcInsecure = true\n[grpcTls]\ncertFile = "/c.crt"\nkeyFile = "/k"\n');
    expect(() => loadRunnerConfig(p3, {}, {})).toThrow(`${p3}: grpcInsecure: grpcInsecure = true contradicts grpcTls; set one of them`);
  });

  it('knows loopback addresses', () => {
    for (const a of ['127.0.0.1:1', '127.1.2.3:50051', 'localhost:1', '[::1]:1']) expect(isLoopbackListen(a), a).toBe(true);
    for (const a of ['0.0.0.0:1', '[::]:1', '10.0.0.1:1', 'runner.example:1', '128.0.0.1:1']) expect(isLoopbackListen(a), a).toBe(false);
  });
});

describe('builder TLS keys', () => {
  const base = { server: 'r:1', tokenFile: '/t' };
  it('takes tlsCaFile, certFile and keyFile', () => {
    expect(loadBuilderConfig(undefined, { ...base, tlsCaFile: '/ca', certFile: '/c', keyFile: '/k' })).toMatchObject({ tlsCaFile: '/ca', certFile: '/c', keyFile: '/k' });
  });

  it('refuses a certificate without its key, and a client certificate without TLS', () => {
    expect(() => loadBuilderConfig(undefined, { ...base, tlsCaFile: '/ca', certFile: '/c' })).toThrow(
      'certFile: certFile (--cert) and keyFile (--key) go together: set both or neither',
    );
    expect(() => loadBuilderConfig(undefined, { ...base, certFile: '/c', keyFile: '/k' })).toThrow(
      "tlsCaFile: a client certificate needs TLS: set tlsCaFile (--tls-ca) to the CA that signed the runner's certificate",
    );
  });
});
