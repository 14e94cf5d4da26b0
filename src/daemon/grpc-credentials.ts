import { ServerCredentials } from '@grpc/grpc-js';
import { isLoopbackListen, type RunnerConfig } from '../config/runner-config.ts';
import { serverCredentials } from '../protocol/tls.ts';
import type { Logger } from '../util/logger.ts';

/**
 * The builder protocol's server credentials from the runner's config: TLS
 * (mutual with grpcTls.clientCaFile), or plain on loopback. Off loopback,
 * plain needs `grpcInsecure = true` (the config refuses it otherwise) and
 * earns a warning at every start.
 */
export function runnerGrpcCredentials(c: RunnerConfig, log: Logger): { creds: ServerCredentials; tls: 'off' | 'tls' | 'mutual' } {
  const t = c.grpcTls;
  if (t) {
    const creds = serverCredentials({
      cert: { what: 'grpcTls.certFile', path: t.certFile },
      key: { what: 'grpcTls.keyFile', path: t.keyFile },
      clientCa: t.clientCaFile ? { what: 'grpcTls.clientCaFile', path: t.clientCaFile } : undefined,
    });
    return { creds, tls: t.clientCaFile ? 'mutual' : 'tls' };
  }
  if (!isLoopbackListen(c.grpcListen)) {
    log.warn({ listen: c.grpcListen }, 'builder protocol without TLS off loopback (grpcInsecure = true): tokens and NARs cross the network in clear');
  }
  return { creds: ServerCredentials.createInsecure(), tls: 'off' };
}
