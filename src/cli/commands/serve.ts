import { RunnerDaemon } from '../../daemon/serve.ts';
import { createLogger } from '../../util/logger.ts';
import { DB_OPTIONS, DB_OPTIONS_HELP, dbOverrides, type Command } from '../command.ts';

export const serve: Command = {
  name: 'serve',
  summary: 'run the queue runner daemon',
  usage: 'hydrant serve [--config FILE] [--db-url URL] [--state-dir DIR] [--standby] [--log-format json|pretty]',
  help: `Runs the queue runner on a Hydra database: checks the schema (creating it on
an empty database), listens for queued builds, and runs until SIGTERM or
SIGINT (graceful drain). SIGHUP reloads the configuration file. It rides out
a database outage (dbGiveUpAfterInS) and exits non-zero when it gives up or
another runner took its lock.
${DB_OPTIONS_HELP}
      --standby         when another runner holds the database, wait as a hot
                        standby and take over when it dies (config: standby)
      --log-format F    json (default) or pretty`,
  options: { ...DB_OPTIONS, standby: { type: 'boolean' }, 'log-format': { type: 'string' } },
  async run({ values }) {
    const log = createLogger({ format: values['log-format'] === 'pretty' ? 'pretty' : 'json' });
    const daemon = new RunnerDaemon({
      configPath: values.config as string | undefined,
      overrides: { ...dbOverrides(values), ...(values.standby ? { standby: true } : {}) },
      log,
      handleSignals: true,
    });
    try {
      await daemon.start();
    } catch (err) {
      await daemon.stop().catch(() => {});
      throw err;
    }
    await daemon.lifecycle.when('stopped');
    return daemon.exitCode;
  },
};
