import { readFile } from 'node:fs/promises';
import { BuilderAgent } from '../../builder/agent.ts';
import { hostStore, PrivateStore } from '../../nix/private-store.ts';
import { loadBuilderConfig } from '../../config/builder-config.ts';
import { ConfigError, type HydrantError } from '../../errors/index.ts';
import { isLoopbackListen } from '../../config/runner-config.ts';
import { channelCredentials } from '../../protocol/tls.ts';
import type { Command } from '../command.ts';
import { createLogger } from '../../util/logger.ts';

export const builder: Command = {
  name: 'builder',
  summary: 'run a build machine that dials in to a runner over gRPC',
  usage: 'hydrant builder --server HOST:PORT --token-file F [--tls-ca FILE [--cert FILE --key FILE]] [--config builder.toml] [--store-dir DIR] [--machine-id ID] [--log-format json|pretty]',
  help: `Connects to a Hydrant runner, joins as a build machine and builds the
steps it is ordered: inputs are fetched from the runner (NARs checked against
their hashes before import), the build runs with the step's limits and its
log streams live, and outputs are streamed back as NARs. A lost connection is
re-dialled with capped exponential backoff under the same machine id, and
running builds carry on. SIGTERM/SIGINT: stop taking jobs, let running ones
finish (up to shutdownGraceInS), then exit 0. A refused token or client
certificate, or a runner certificate that fails verification, is fatal: one
error line naming the file to fix, exit 1.

      --server HOST:PORT   the runner's gRPC address (config key server)
      --token-file F       file holding the bearer token (tokenFile)
      --tls-ca FILE        dial with TLS, trusting only this CA for the
                           runner's certificate (tlsCaFile)
      --cert FILE          client certificate for mutual TLS (certFile)
      --key FILE           its private key, mode 600 (keyFile)
  -c, --config FILE        builder configuration (TOML, camelCase keys:
                           server, tokenFile, tlsCaFile, certFile, keyFile,
                           machineId, systems,
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
    'tls-ca': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'store-dir': { type: 'string' },
    'machine-id': { type: 'string' },
    'log-format': { type: 'string' },
  },
  async run({ values }) {
    const config = loadBuilderConfig(values.config as string | undefined, {
      server: values.server,
      tokenFile: values['token-file'],
      tlsCaFile: values['tls-ca'],
      certFile: values.cert,
      keyFile: values.key,
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
    const credentials = config.tlsCaFile
      ? channelCredentials({
          ca: { what: '--tls-ca (tlsCaFile)', path: config.tlsCaFile },
          cert: config.certFile ? { what: '--cert (certFile)', path: config.certFile } : undefined,
          key: config.keyFile ? { what: '--key (keyFile)', path: config.keyFile } : undefined,
        })
      : undefined;
    const store = config.storeDir ? await PrivateStore.create(config.storeDir) : hostStore;
    // Structured lines (pino) naming the machine, and the job when the line is about one.
    const logger = createLogger({ format: values['log-format'] === 'pretty' ? 'pretty' : 'json' }).child({ role: 'builder', machine: config.machineId });
    const log = (m: string): void => {
      const job = /^job (\S+)/.exec(m)?.[1];
      if (job) logger.info({ job }, m);
      else logger.info(m);
    };
    if (!credentials && !isLoopbackListen(config.server)) {
      logger.warn({ server: config.server }, 'dialling a non-loopback runner without TLS (--tls-ca): the token and NARs travel in clear');
    }
    let fatal: HydrantError | undefined;
    await new Promise<void>((resolve) => {
      let stopping = false;
      const stop = (): void => {
        if (stopping) return;
        stopping = true;
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        void agent.shutdown(fatal ? 0 : undefined).then(resolve, resolve);
      };
      const onSignal = (sig: NodeJS.Signals): void => {
        if (!stopping) log(`${sig}: draining`);
        stop();
      };
      const agent = new BuilderAgent({
        config,
        token,
        store,
        log,
        credentials,
        onFatal: (err) => {
          fatal = err;
          stop();
        },
      });
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
      agent.start();
      log(`machine ${config.machineId} connecting to ${config.server} (${store.kind} store${credentials ? ', TLS' : ''})`);
    });
    // main prints it as the one line that says what to fix, and exits 1.
    if (fatal) throw fatal;
    return 0;
  },
};
