import { loadRunnerConfig, type RunnerConfig } from '../../config/runner-config.ts';
import { ConfigError } from '../../errors/index.ts';
import type { CommandArgs } from '../command.ts';
import { databaseError, dbOverrides } from '../database.ts';

export async function run({ values }: CommandArgs): Promise<number> {
  const configPath = values.config as string | undefined;
  const overrides = {
    ...dbOverrides(values),
    httpListen: values['http-listen'],
    grpcListen: values['grpc-listen'],
    ...(values.standby ? { standby: true } : {}),
  };
  // The daemon's own first check, made before its code (gRPC, pg, the scheduler) is
  // imported: a mistake in the configuration is reported without loading the runner.
  loadRunnerConfig(configPath, overrides);
  const [{ RunnerDaemon }, { setLogVerbosity, logVerbosity }, { createLogger }] = await Promise.all([
    import('../../daemon/serve.ts'),
    import('@grpc/grpc-js'),
    import('../../util/logger.ts'),
  ]);
  const log = createLogger();
  // grpc-js would print its own line for a failed bind; the one below names the key instead.
  if (log.levelVal > 20) setLogVerbosity(logVerbosity.NONE);
  const daemon = new RunnerDaemon({ configPath, overrides, log, handleSignals: true });
  try {
    await daemon.start();
  } catch (err) {
    await daemon.stop().catch(() => {});
    throw listenError(err, daemon.config) ?? databaseError(err, daemon.config) ?? err;
  }
  await daemon.lifecycle.when('stopped');
  return daemon.exitCode;
}

const LISTEN_FAILURES: Record<string, string> = {
  EADDRINUSE: 'the address is in use (another runner, or another service on that port?)',
  EACCES: 'not allowed to bind it (a port below 1024 needs privileges)',
  EADDRNOTAVAIL: 'no interface of this host has that address',
};

/**
 * A failed bind as one line naming the key and the flag to change, instead
 * of Node's stack. gRPC's bind error names "No address added"; the HTTP
 * server's is Node's own (`listen EADDRINUSE`).
 */
export function listenError(err: unknown, config: RunnerConfig): ConfigError | null {
  const message = String((err as Error)?.message ?? err);
  const code = Object.keys(LISTEN_FAILURES).find((c) => message.includes(c) || (err as NodeJS.ErrnoException)?.code === c);
  if (!code) return null;
  const grpc = message.includes('No address added');
  if (!grpc && !/\blisten\b/.test(message)) return null;
  const [key, flag, value] = grpc ? ['grpcListen', '--grpc-listen', config.grpcListen] : ['httpListen', '--http-listen', config.httpListen];
  const off = grpc ? '' : ", or '' to turn the HTTP API off";
  return new ConfigError(`${key} (${flag}) ${value}: ${LISTEN_FAILURES[code]}: choose another HOST:PORT${off}`, { cause: err });
}
