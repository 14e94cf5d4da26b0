import { readFile } from 'node:fs/promises';
import { BuilderAgent } from '../../builder/agent.ts';
import { hostStore, PrivateStore } from '../../nix/private-store.ts';
import { loadBuilderConfig } from '../../config/builder-config.ts';
import { ConfigError, type HydrantError } from '../../errors/index.ts';
import { isLoopbackListen } from '../../config/runner-config.ts';
import { channelCredentials } from '../../protocol/tls.ts';
import type { CommandArgs } from '../command.ts';
import { createLogger } from '../../util/logger.ts';

export async function run({ values }: CommandArgs): Promise<number> {
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
}

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
