import { setLogVerbosity, logVerbosity } from '@grpc/grpc-js';
import type { RunnerConfig } from '../../config/runner-config.ts';
import { RunnerDaemon } from '../../daemon/serve.ts';
import { ConfigError } from '../../errors/index.ts';
import { createLogger } from '../../util/logger.ts';
import { databaseError, DB_OPTIONS, DB_OPTIONS_HELP, dbOverrides, type Command } from '../command.ts';

export const serve: Command = {
  name: 'serve',
  summary: 'run the queue runner daemon',
  usage: 'hydrant serve [--config FILE] [--db-url URL] [--state-dir DIR] [--http-listen HOST:PORT] [--grpc-listen HOST:PORT] [--standby]',
  help: `Runs the queue runner on a Hydra database: checks the schema (creating it on
an empty database), listens for queued builds, and runs until SIGTERM or
SIGINT (graceful drain). SIGHUP reloads the configuration file. It rides out
a database outage (dbGiveUpAfterInS) and exits non-zero when it gives up or
another runner took its lock. Flags win over the configuration file.
${DB_OPTIONS_HELP}
      --http-listen A   status API, /metrics and visualizer address, HOST:PORT,
                        or '' for none (httpListen; default 127.0.0.1:8080)
      --grpc-listen A   builder protocol address, HOST:PORT (grpcListen;
                        default 127.0.0.1:50051)
      --standby         when another runner holds the database, wait as a hot
                        standby and take over when it dies (config: standby)`,
  options: {
    ...DB_OPTIONS,
    standby: { type: 'boolean' },
    'http-listen': { type: 'string' },
    'grpc-listen': { type: 'string' },
  },
  async run({ values }) {
    const log = createLogger();
    // grpc-js would print its own line for a failed bind; the one below names the key instead.
    if (log.levelVal > 20) setLogVerbosity(logVerbosity.NONE);
    const daemon = new RunnerDaemon({
      configPath: values.config as string | undefined,
      overrides: {
        ...dbOverrides(values),
        httpListen: values['http-listen'],
        grpcListen: values['grpc-listen'],
        ...(values.standby ? { standby: true } : {}),
      },
      log,
      handleSignals: true,
    });
    try {
      await daemon.start();
    } catch (err) {
      await daemon.stop().catch(() => {});
      throw listenError(err, daemon.config) ?? databaseError(err, daemon.config) ?? err;
    }
    await daemon.lifecycle.when('stopped');
    return daemon.exitCode;
  },
};

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
