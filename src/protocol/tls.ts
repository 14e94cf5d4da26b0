import { readFileSync, statSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { credentials, ServerCredentials, type ChannelCredentials } from '@grpc/grpc-js';
import { ConfigError } from '../errors/index.ts';

/**
 * TLS material for the builder protocol, read once at start. Every error is
 * one ConfigError naming the setting (`what`) and the file, never its content.
 */

/** A setting's name as the operator wrote it (e.g. `grpcTls.keyFile`, `--key (keyFile)`) and its file. */
export interface FileSetting {
  readonly what: string;
  readonly path: string;
}

function readPem(s: FileSetting): Buffer {
  try {
    return readFileSync(s.path);
  } catch (err) {
    throw new ConfigError(`${s.what}: cannot read ${s.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** A private key others can read is refused, as ssh does: it would no longer identify this host alone. */
function readKey(s: FileSetting): Buffer {
  const data = readPem(s);
  const mode = statSync(s.path).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new ConfigError(`${s.what}: ${s.path} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
  }
  return data;
}

function readCert(s: FileSetting): Buffer {
  const data = readPem(s);
  try {
    new X509Certificate(data);
  } catch (err) {
    throw new ConfigError(`${s.what}: ${s.path} is not a PEM certificate`, { cause: err });
  }
  return data;
}

export interface ServerTlsFiles {
  readonly cert: FileSetting;
  readonly key: FileSetting;
  /** Given: every call must come over a connection whose client certificate this CA signed. */
  readonly clientCa?: FileSetting;
}

/**
 * Server credentials. With a client CA the handshake asks for a client
 * certificate but does not fail without one (`rejectUnauthorized: false`):
 * Node's own refusal tells neither side why (the runner sees "socket hang
 * up", the builder "Failed to connect"), so the server refuses every call of
 * an unverified connection itself, with a status and a log line that say why.
 */
export function serverCredentials(files: ServerTlsFiles): ServerCredentials {
  const cert = readCert(files.cert);
  const key = readKey(files.key);
  const ca = files.clientCa ? readCert(files.clientCa) : undefined;
  if (!ca) return ServerCredentials.createSsl(null, [{ cert_chain: cert, private_key: key }], false);
  return new ClientCertServerCredentials(cert, key, ca);
}

class ClientCertServerCredentials extends ServerCredentials {
  constructor(cert: Buffer, key: Buffer, ca: Buffer) {
    super({ requestCert: true, rejectUnauthorized: false }, { cert, key, ca });
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

export interface ClientTlsFiles {
  /** The CA that signed the runner's certificate (only it is trusted). */
  readonly ca: FileSetting;
  /** Both or neither: the builder's client certificate for mutual TLS. */
  readonly cert?: FileSetting;
  readonly key?: FileSetting;
}

export function channelCredentials(files: ClientTlsFiles): ChannelCredentials {
  const ca = readCert(files.ca);
  const cert = files.cert ? readCert(files.cert) : null;
  const key = files.key ? readKey(files.key) : null;
  return credentials.createSsl(ca, key, cert);
}

/**
 * Whether a failed connection was a certificate the builder refused (its
 * --tls-ca did not sign the runner's, it expired, or names another host),
 * as opposed to a network failure worth retrying.
 */
export function certificateFailure(details: string): string | undefined {
  if (/wrong version number|packet length too long/i.test(details)) return 'the runner does not speak TLS (is grpcTls set on the runner?)';
  const m = /(certificate has expired|certificate is not yet valid|unable to verify the first certificate|unable to get local issuer certificate|self[- ]signed certificate[^.(\n]*|Hostname\/IP does not match certificate's altnames[^.(\n]*|alert [a-z ]*certificate[a-z ]*)/i.exec(details);
  return m?.[1]?.trim();
}
