import { loadProvisionerConfig } from '../../config/provisioner-config.ts';
import { ConfigError } from '../../errors/index.ts';
import { runProvisioner } from '../../provision/run.ts';
import { createLogger } from '../../util/logger.ts';
import type { Command } from '../command.ts';

export const provision: Command = {
  name: 'provision',
  summary: 'create and stop build machines as the queue needs them (hydra-provisioner)',
  usage: 'hydrant provision --config FILE [--once] [--state-dir DIR]',
  help: `Reads the runner's queue (its HTTP status API, statusUrl, or a
statusCommand printing the hydra-queue-runner --status JSON) and, per
[systemTypes."<system>[:features]"], keeps
ceil((runnable - ignoredRunnables) / runnablesPerMachine) machines, clamped
to [minMachines, maxMachines]: created through the backend (local: hydrant
builder agents with private stores on this host; command: your create,
start, stop, destroy and list commands), at most maxCreatesPerPass a pass,
and stopped (stopOnIdle) or destroyed once idle for gracePeriod seconds.
SSH machines are written to a Hydra machines file (machinesFile or
updateCommand). Each machine's state is saved in the state directory, so a
restarted provisioner adopts what exists. docs/PROVISIONER.md has the keys.

  -c, --config FILE     provisioner configuration (TOML)
      --once            one pass, then exit (its report on stdout)
      --state-dir DIR   where machine snapshots live (config key stateDir)`,
  options: {
    config: { type: 'string', short: 'c' },
    once: { type: 'boolean' },
    'state-dir': { type: 'string' },
  },
  async run({ values }) {
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
  },
};
