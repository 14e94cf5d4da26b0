import { createWriteStream, type WriteStream } from 'node:fs';
import { RunnerDaemon } from '../daemon/serve.ts';
import { submitJobs, type SubmitJob } from '../db/submit.ts';
import { evaluateJobs } from '../eval/evaluate.ts';
import { DemoError } from '../errors/index.ts';
import { LocalNixStore } from '../nix/local-store.ts';
import { createLogger } from '../util/logger.ts';
import { builderPaths, type BuilderProcess, type BuilderProcessOptions } from './builders.ts';
import { BuilderFleet } from './fleet.ts';
import { DEMO_PROVISION, DemoProvisioner } from './provisioned.ts';
import { RELEASE_JOB } from './expected.ts';
import { formatElapsed, ProgressView } from './progress.ts';
import { buildProducts, busySteps, readBuilds, stepsPerMachine, type DemoBuild } from './reads.ts';
import { cacheStoreUri, DEMO_JOBSET, DEMO_KEY_NAME, demoCompression, prepareStateDir, type DemoPaths } from './state-dir.ts';
import { renderSummary } from './summary.ts';

export interface DemoOptions {
  stateDir: string;
  exitWhenDone: boolean;
  httpPort: number | undefined;
  logFormat: 'json' | 'pretty';
  /** Runner and builder logs on stderr instead of files in the state directory. */
  verbose: boolean;
  builders?: number;
  /** No builders at first: the provisioner starts them as the jobset needs them (DemoProvisioner). */
  provision?: boolean;
  out?: NodeJS.WriteStream;
}

export const DEMO_PROJECT = 'demo';
export const DEMO_JOBSET_NAME = 'main';
const POLL_MS = 250;
const JOIN_TIMEOUT_MS = 60_000;

/**
 * `hydrant demo`: the runner (in this process, on the embedded database in
 * the state directory), two builder agents (child processes, each with its
 * own Nix store when run as root), the bundled jobset submitted as demo:main,
 * progress while it builds, and a summary. Returns the exit code.
 */
export async function runDemo(o: DemoOptions): Promise<number> {
  const out = o.out ?? process.stdout;
  const tty = out.isTTY === true;
  const startedAt = Date.now();
  const say = (line: string): void => void out.write(`${line}\n`);

  // The demo owns its database: the state directory's embedded PostgreSQL.
  if (process.env.HYDRA_DATABASE_URL) {
    say('hydrant demo: ignoring HYDRA_DATABASE_URL (the demo runs on its own embedded database)');
    delete process.env.HYDRA_DATABASE_URL;
  }
  const paths = await prepareStateDir(o.stateDir);
  const compression = demoCompression();
  const logFile: WriteStream | null = o.verbose ? null : createWriteStream(paths.logFile, { flags: 'a' });
  // A full or failing disk under the state directory loses the log, not the demo.
  logFile?.on('error', () => {}).once('error', (err) => say(`hydrant demo: cannot write ${paths.logFile} (${err.message}); the runner's log is lost from here on`));
  const log = createLogger({ format: o.logFormat, destination: logFile ?? undefined });

  // Signals (SIGHUP too: a closed terminal): the first one stops the demo cleanly, a second one at once.
  let signalled: NodeJS.Signals | null = null;
  let wake: () => void = () => {};
  let fleet: BuilderFleet | null = null;
  let provisioner: DemoProvisioner | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) {
      fleet?.killAll();
      process.exit(exitCodeFor(sig));
    }
    signalled = sig;
    wake();
  };
  const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const sig of STOP_SIGNALS) process.on(sig, onSignal);
  const pause = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(t);
        resolve();
      };
    });

  const daemon = new RunnerDaemon({
    overrides: {
      stateDir: paths.root, // the embedded PostgreSQL lives in <stateDir>/postgres
      hydraDataDir: paths.hydraDataDir,
      tokenPaths: [paths.tokenFile],
      grpcListen: '127.0.0.1:0',
      remoteStoreAddr: [cacheStoreUri(paths, compression)],
      // Without --http-port, no HTTP at all: the demo must not take (or clash on) the default port.
      // (--provision: a free loopback port, which the provisioner reads the queue from).
      httpListen: o.httpPort === undefined ? (o.provision ? '127.0.0.1:0' : '') : `127.0.0.1:${o.httpPort}`,
      shutdownGraceInS: 3,
      // A builder that died is restarted and settles its lost jobs when it joins again; this bounds the wait when it does not.
      builderGraceInS: 10,
      retryInterval: 1,
      retryBackoff: 2,
      maxRetries: 3,
    },
    log,
    handleSignals: false,
  });

  let view: ProgressView | null = null;
  try {
    say(`hydrant demo: state in ${paths.root}${o.verbose ? '' : ` (runner log: ${paths.logFile})`}`);
    await daemon.start();
    say(`  runner: embedded PostgreSQL in ${paths.root}/postgres, builder protocol on 127.0.0.1:${daemon.grpcPort}${o.httpPort !== undefined ? `, visualizer on http://127.0.0.1:${o.httpPort}/ (status API under /status)` : ''}`);
    if (signalled) return interrupted(signalled, say, 0, 0);

    const privateStores = process.getuid?.() === 0;
    let builders: BuilderFleet | null = null;
    if (o.provision) {
      provisioner = new DemoProvisioner({ stateDir: paths.root, grpcPort: daemon.grpcPort, httpPort: daemon.http!.port, tokenFile: paths.tokenFile, privateStores, log });
      provisioner.start();
      say(
        `  builders: none yet; the provisioner starts up to ${DEMO_PROVISION.maxMachines} as the queue needs them (${DEMO_PROVISION.runnablesPerMachine} runnable steps each) and destroys them ${DEMO_PROVISION.gracePeriod} s after they go idle (state in ${provisioner.config.stateDir})`,
      );
    } else {
      const builderOptions: BuilderProcessOptions[] = [];
      for (let n = 1; n <= (o.builders ?? 2); n++) {
        const bp = builderPaths(paths.buildersDir, n);
        builderOptions.push({
          machineId: bp.machineId,
          server: `127.0.0.1:${daemon.grpcPort}`,
          tokenFile: paths.tokenFile,
          storeDir: privateStores ? bp.storeDir : undefined,
          logFile: bp.logFile,
          echo: o.verbose,
        });
      }
      fleet = new BuilderFleet(builderOptions);
      builders = fleet;
      await waitForBuilders(daemon, builders.builders, () => signalled !== null, pause);
      if (signalled) return interrupted(signalled, say, 0, 0);
      say(
        `  builders: ${builders.builders.map((b) => b.o.machineId).join(', ')} joined, ${privateStores ? `each with its own Nix store in ${paths.buildersDir}/<n>` : 'sharing the host Nix store (not root)'}`,
      );
    }
    // Lines about the builders since the last look: restarts of the demo's own, or the provisioner's moves.
    const builderNews = async (): Promise<string[]> => (builders ? builders.supervise(jobsOf) : (provisioner?.drain() ?? []));

    const machines = daemon.runtime!.scheduler.dispatcher.machines;
    const jobsOf = (id: string): number => machines.get(id)?.snapshot().jobs ?? 0;
    const ids = await submitDemo(daemon, paths, say);
    const pool = daemon.database.pool;
    view = new ProgressView(out, tty, ids.length, startedAt);
    let builds: DemoBuild[] = [];
    for (;;) {
      builds = await readBuilds(pool, ids);
      view.update(builds, await busySteps(pool, ids));
      if (builds.every((b) => b.finished)) break;
      const restarted = await builderNews();
      if (restarted.length > 0) {
        view.clearBar();
        for (const line of restarted) say(line);
      }
      if (signalled) {
        view.clearBar();
        return interrupted(signalled, say, view.ended, ids.length);
      }
      await pause(POLL_MS);
    }
    view.clearBar();

    const releaseBuild = builds.find((b) => b.job === RELEASE_JOB);
    const { text, differences } = renderSummary({
      builds,
      machines: await stepsPerMachine(pool, ids),
      elapsedMs: Date.now() - startedAt,
      paths,
      keyName: DEMO_KEY_NAME,
      release: releaseBuild ? { build: releaseBuild, products: await buildProducts(pool, releaseBuild.id) } : null,
      httpPort: o.httpPort,
      compression,
    });
    out.write(text);
    const code = differences.length === 0 ? 0 : 1;
    if (o.exitWhenDone) return code;

    say(`\nThe runner and the builders keep running${provisioner ? ' (the provisioner destroys idle builders after the grace period)' : ''}; Ctrl-C stops them.`);
    while (!signalled) {
      for (const line of await builderNews()) say(line);
      await pause(1000);
    }
    return code;
  } finally {
    view?.clearBar();
    if (signalled) say('hydrant demo: stopping the runner and the builders');
    await Promise.all([
      daemon.stop().catch((e: unknown) => log.error({ err: String(e) }, 'runner stop failed')),
      fleet?.stop(),
      provisioner?.stop().catch((e: unknown) => log.error({ err: String(e) }, 'provisioned builders not all destroyed')),
    ]);
    for (const sig of STOP_SIGNALS) process.off(sig, onSignal);
    if (logFile) await new Promise<void>((resolve) => logFile.end(resolve));
  }
}

function interrupted(sig: NodeJS.Signals, say: (l: string) => void, ended: number, total: number): number {
  say(`hydrant demo: ${sig} before every build ended${total > 0 ? ` (${ended} of ${total} ended)` : ''}`);
  return exitCodeFor(sig);
}

/** 128 + the signal's number, as shells report a process ended by it. */
function exitCodeFor(sig: NodeJS.Signals): number {
  return sig === 'SIGINT' ? 130 : sig === 'SIGHUP' ? 129 : 143;
}

/** Resolves once every builder has joined the runner. */
async function waitForBuilders(daemon: RunnerDaemon, builders: readonly BuilderProcess[], stop: () => boolean, pause: (ms: number) => Promise<void>): Promise<void> {
  const deadline = Date.now() + JOIN_TIMEOUT_MS;
  const machines = daemon.runtime!.scheduler.dispatcher.machines;
  while (!stop()) {
    const waiting = builders.filter((b) => !machines.has(b.o.machineId));
    if (waiting.length === 0) return;
    const dead = waiting.find((b) => !b.running);
    if (dead) throw new DemoError(`builder ${dead.o.machineId} exited before joining; its last output:\n${dead.lastLines()}`);
    if (Date.now() > deadline) {
      throw new DemoError(`builder ${waiting[0]!.o.machineId} did not join within ${formatElapsed(JOIN_TIMEOUT_MS)}; its last output:\n${waiting[0]!.lastLines()}`);
    }
    await pause(100);
  }
}

/** Evaluates the demo jobset and queues it as demo:main, as `hydrant submit --create` does; returns the build ids of the evaluation. */
async function submitDemo(daemon: RunnerDaemon, paths: DemoPaths, say: (l: string) => void): Promise<number[]> {
  const t0 = Date.now();
  const evaluated = await evaluateJobs(paths.jobsetFile);
  const store = new LocalNixStore();
  const jobs: SubmitJob[] = await Promise.all(evaluated.map(async (j) => ({ ...j, outputs: (await store.readDerivation(j.drvPath)).outputs })));
  const r = await submitJobs(daemon.database.pool, {
    project: DEMO_PROJECT,
    jobset: DEMO_JOBSET_NAME,
    create: true,
    jobs,
    now: Math.floor(Date.now() / 1000),
    evalSeconds: Math.round((Date.now() - t0) / 1000),
    source: DEMO_JOBSET,
  });
  say(`  evaluation ${r.evalId} of ${DEMO_PROJECT}:${DEMO_JOBSET_NAME}: ${r.added.length} builds queued, ${r.existing.length} already there`);
  return [...r.added, ...r.existing].map((b) => b.id).sort((a, b) => a - b);
}
