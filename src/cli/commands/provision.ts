import { loadProvisionerConfig } from '../../config/provisioner-config.ts';
import { ConfigError } from '../../errors/index.ts';
import { runProvisioner } from '../../provision/run.ts';
import { createLogger } from '../../util/logger.ts';
import type { CommandArgs } from '../command.ts';

export async function run({ values }: CommandArgs): Promise<number> {
  const file = values.config as string | undefined;
  if (file === undefined) throw new ConfigError('hydrant provision: --config FILE is required (docs/PROVISIONER.md)');
  const config = loadProvisionerConfig(file, { stateDir: values['state-dir'] });
  const log = createLogger().child({ role: 'provisioner' });
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    log.info(`${sig}: stopping after this pass; machines stay as they are`);
    abort.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    const report = await runProvisioner(config, log, { once: values.once === true, signal: abort.signal });
    if (values.once === true) process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
  return 0;
}
