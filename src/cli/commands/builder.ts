import { readFile } from 'node:fs/promises';
import { BuilderAgent } from '../../builder/agent.ts';
import { hostStore, PrivateStore } from '../../builder/private-store.ts';
import { loadBuilderConfig } from '../../config/builder-config.ts';
import { ConfigError } from '../../errors/index.ts';
import type { Command } from '../command.ts';
import { createLogger } from '../../util/logger.ts';

export const builder: Command = {
  name: 'builder',
  summary: 'run a build machine that dials in to a runner over gRPC',
  usage: 'hydrant builder --server HOST:PORT --token-file F [--config builder.toml] [--store-dir DIR] [--machine-id ID] [--log-format json|pretty]',
  help: `Connects to a Hydrant runner, joins as a build machine and builds the
steps it is ordered: inputs are fetched from the runner (NARs checked against
their hashes before import), the build runs with the step's limits and its
log streams live, and outputs are streamed back as NARs. A lost connection is
re-dialled with capped exponential backoff under the same machine id, and
running builds carry on. SIGTERM/SIGINT: stop taking jobs, let running ones
finish (up to shutdownGraceInS), then exit 0.

      --server HOST:PORT   the runner's gRPC address (config key server)
      --token-file F       file holding the bearer token (tokenFile)
  -c, --config FILE        builder configuration (TOML, camelCase keys:
                           server, tokenFile, machineId, systems,
                           supportedFeatures, mandatoryFeatures, maxJobs,
                           speedFactor, thresholds, storeDir, buildDir,
                           reconnectMinMs, reconnectMaxMs, shutdownGraceInS)
      --store-dir DIR      build in a private Nix store under DIR (its own
                           mount namespace) instead of the host store
      --machine-id ID      stable machine id (default: the hostname)
      --log-format F       json (default) or pretty`,
  options: {
    config: { type: 'string', short: 'c' },
    server: { type: 'string' },
    'token-file': { type: 'string' },
    'store-dir': { type: 'string' },
    'machine-id': { type: 'string' },
    'log-format': { type: 'string' },
  },
  async run({ values }) {
    const config = loadBuilderConfig(values.config as string | undefined, {
      server: values.server,
      tokenFile: values['token-file'],
      storeDir: values['store-dir'],
      machineId: values['machine-id'],
    });
    let token: string;
    try {
      token = (await readFile(config.tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new ConfigError(`${config.tokenFile}: cannot read the token: ${(err as Error).message}`, { cause: err });
    }
    if (token === '') throw new ConfigError(`${config.tokenFile}: empty token`);
    const store = config.storeDir ? await PrivateStore.create(config.storeDir) : hostStore;
    // Structured lines (pino) naming the machine, and the job when the line is about one.
    const logger = createLogger({ format: values['log-format'] === 'pretty' ? 'pretty' : 'json' }).child({ role: 'builder', machine: config.machineId });
    const log = (m: string): void => {
      const job = /^job (\S+)/.exec(m)?.[1];
      if (job) logger.info({ job }, m);
      else logger.info(m);
    };
    const agent = new BuilderAgent({ config, token, store, log });
    agent.start();
    log(`machine ${config.machineId} connecting to ${config.server} (${store.kind} store)`);
    await new Promise<void>((resolve) => {
      let stopping = false;
      const onSignal = (sig: NodeJS.Signals): void => {
        if (stopping) return;
        stopping = true;
        log(`${sig}: draining`);
        void agent.shutdown().then(resolve, resolve);
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    });
    return 0;
  },
};
