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
  usage: 'hydrant builder --server HOST:PORT --token-file F [--tls-ca FILE [--cert FILE --key FILE]] [--config builder.toml] [--max-jobs N] [--systems S,...] [--features F,...] [--store-dir DIR] [--machine-id ID]',
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
      --token-file F       file holding the bearer token, one of the runner's
                           tokenPaths (tokenFile; tokenPath is accepted too)
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
      --max-jobs N         jobs at once (maxJobs; default this machine's cores,
                           as Nix's max-jobs = auto)
      --systems S,...      systems it builds for (systems; default this host's
                           system and builtin); repeatable or comma-separated
      --features F,...     supported system features (supportedFeatures;
                           default ca-derivations); repeatable or comma-separated
      --mandatory-features F,...
                           features a step must ask for to run here
                           (mandatoryFeatures)`,
  options: {
    config: { type: 'string', short: 'c' },
    server: { type: 'string' },
    'token-file': { type: 'string' },
    'tls-ca': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'store-dir': { type: 'string' },
    'machine-id': { type: 'string' },
    'max-jobs': { type: 'string' },
    systems: { type: 'string', multiple: true },
    features: { type: 'string', multiple: true },
    'mandatory-features': { type: 'string', multiple: true },
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
      maxJobs: positiveInt('--max-jobs', values['max-jobs'] as string | undefined),
      systems: list(values.systems),
      supportedFeatures: list(values.features),
      mandatoryFeatures: list(values['mandatory-features']),
    });
    let token: string;
    try {
      token = (await readFile(config.tokenFile, 'utf8')).trim();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
      throw new ConfigError(`${config.tokenFile}: cannot read the token (--token-file, tokenFile): ${why}`, { cause: err });
    }
    if (token === '') throw new ConfigError(`${config.tokenFile}: empty token (--token-file, tokenFile): put one of the runner's tokenPaths tokens in it`);
    const credentials = config.tlsCaFile
      ? channelCredentials({
          ca: { what: '--tls-ca (tlsCaFile)', path: config.tlsCaFile },
          cert: config.certFile ? { what: '--cert (certFile)', path: config.certFile } : undefined,
          key: config.keyFile ? { what: '--key (keyFile)', path: config.keyFile } : undefined,
        })
      : undefined;
    const store = config.storeDir ? await PrivateStore.create(config.storeDir) : hostStore;
    // Structured lines (pino) naming the machine, and the job when the line is about one.
    const logger = createLogger().child({ role: 'builder', machine: config.machineId });
    const log = (m: string): void => {
      const job = /^job (\S+)/.exec(m)?.[1];
      if (job) logger.info({ job }, m);
      // A lost or unreachable runner is retried, but someone should see it.
      else if (m.startsWith('control stream:')) logger.warn({ server: config.server }, m);
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
    if (fatal) {
      logger.error({ code: fatal.code }, fatal.message);
      throw fatal;
    }
    return 0;
  },
};

/** A repeatable flag whose values may also be comma-separated; undefined when not given. */
function list(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  return (v as string[]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
}

function positiveInt(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new ConfigError(`${flag}: '${v}' is not a positive whole number`);
  return Number(v);
}
