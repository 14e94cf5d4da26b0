import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Certificates made by the real `openssl` CLI for TLS tests: two CAs, a
 * server certificate for 127.0.0.1/localhost, an expired one, and client
 * certificates from each CA. Keys are written mode 600.
 */
export interface TestCerts {
  readonly dir: string;
  readonly caCert: string;
  readonly otherCaCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly expiredServerCert: string;
  readonly expiredServerKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** A client certificate signed by the other CA. */
  readonly foreignClientCert: string;
  readonly foreignClientKey: string;
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): { cert: string; key: string } {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '30', '-subj', `/CN=${name}`], dir);
  chmodSync(key, 0o600);
  return { cert, key };
}

/** A key, a CSR and a certificate signed by `ca` through `openssl ca`, so that the validity dates can lie in the past. */
function issue(
  dir: string,
  ca: { cert: string; key: string },
  name: string,
  ext: string,
  dates: { start: string; end: string } | { days: number },
): { cert: string; key: string } {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.crt`);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], dir);
  chmodSync(key, 0o600);
  const db = join(dir, `${name}.db`);
  mkdirSync(db, { recursive: true });
  writeFileSync(join(db, 'index.txt'), '');
  const conf = join(dir, `${name}.cnf`);
  writeFileSync(
    conf,
    [
      '[ca]',
      'default_ca = test_ca',
      '[test_ca]',
      `database = ${join(db, 'index.txt')}`,
      `new_certs_dir = ${db}`,
      'rand_serial = yes',
      'default_md = sha256',
      'policy = any',
      'copy_extensions = none',
      'unique_subject = no',
      '[any]',
      'commonName = supplied',
      '[ext]',
      'basicConstraints = critical,CA:FALSE',
      ext,
      '',
    ].join('\n'),
  );
  const validity = 'days' in dates ? ['-days', String(dates.days)] : ['-startdate', dates.start, '-enddate', dates.end];
  openssl(['ca', '-batch', '-notext', '-config', conf, '-extensions', 'ext', '-cert', ca.cert, '-keyfile', ca.key, '-in', csr, '-out', cert, ...validity], dir);
  return { cert, key };
}

const SERVER_EXT = 'subjectAltName = IP:127.0.0.1,DNS:localhost\nextendedKeyUsage = serverAuth';
const CLIENT_EXT = 'extendedKeyUsage = clientAuth';

export function makeTestCerts(dir: string): TestCerts {
  const ca = makeCa(dir, 'ca');
  const other = makeCa(dir, 'other-ca');
  const server = issue(dir, ca, 'server', SERVER_EXT, { days: 30 });
  const expired = issue(dir, ca, 'expired-server', SERVER_EXT, { start: '20200101000000Z', end: '20200201000000Z' });
  const client = issue(dir, ca, 'client', CLIENT_EXT, { days: 30 });
  const foreign = issue(dir, other, 'foreign-client', CLIENT_EXT, { days: 30 });
  return {
    dir,
    caCert: ca.cert,
    otherCaCert: other.cert,
    serverCert: server.cert,
    serverKey: server.key,
    expiredServerCert: expired.cert,
    expiredServerKey: expired.key,
    clientCert: client.cert,
    clientKey: client.key,
    foreignClientCert: foreign.cert,
    foreignClientKey: foreign.key,
  };
}
