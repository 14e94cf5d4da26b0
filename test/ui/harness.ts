import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { DerivationSummary } from '../../src/actors/model.ts';
import { Lifecycle } from '../../src/daemon/lifecycle.ts';
import type { RunnerRuntime } from '../../src/daemon/runner-runtime.ts';
import { HttpError } from '../../src/errors/index.ts';
import { Router } from '../../src/http/router.ts';
import { startHttpApi, type HttpApi } from '../../src/http/server.ts';
import { registerViewerRoutes } from '../../src/http/viewer-routes.ts';
import type { LiveFeed } from '../../src/status/live-feed.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { SimulatedBuilder } from '../sim/simulated-builder.ts';
import { syntheticDag } from '../sim/synthetic-dag.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, quietLog, startRuntime } from '../helpers/runtime.ts';

/** Debian's Chromium (`apt-get install chromium`; .ci/run installs it). */
export const CHROMIUM = process.env.HYDRANT_CHROMIUM ?? '/usr/bin/chromium';

/** Where browser tests leave screenshots (gitignored). */
export const RESULTS_DIR = fileURLToPath(new URL('../../test-results/', import.meta.url));

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
}

/** A page with a fixed viewport that fails the test on any page error. */
export async function newPage(browser: Browser, errors: string[]): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on('pageerror', (e) => errors.push(String(e.stack ?? e)));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  return page;
}

export function resultPath(name: string): string {
  const p = join(RESULTS_DIR, name);
  mkdirSync(dirname(p), { recursive: true });
  return p;
}

export interface SimRunner {
  readonly base: string;
  /** The one build, which needs every step. */
  readonly buildId: number;
  readonly runtime: RunnerRuntime;
  readonly feed: LiveFeed;
  /** Adds `count` simulated machines of `jobs` slots whose builds take `buildMs`. */
  addMachines(count: number, jobs: number, buildMs: number): void;
  stop(): Promise<void>;
}

/**
 * A runner on `pool` with one build of `steps` steps (a synthetic
 * nixpkgs-shaped DAG under one top derivation), no Nix: the in-memory store
 * and simulated builders of test/sim, and the viewer routes the daemon serves.
 */
export async function startSimRunner(pool: pg.Pool, steps: number, seed = 1): Promise<SimRunner> {
  const dag = syntheticDag({ steps: steps - 1, seed });
  const store = new MemoryStore();
  for (const d of dag.derivations) store.add(d);
  const top: DerivationSummary = {
    drvPath: `/nix/store/${'z'.repeat(32)}-everything-${steps}.drv`,
    system: 'x86_64-linux',
    requiredFeatures: [],
    preferLocalBuild: false,
    outputs: [{ name: 'out', path: `/nix/store/${'y'.repeat(32)}-everything-${steps}` }],
    inputDrvs: new Map(dag.builds.map((b) => [b, ['out']])),
    isCA: false,
  };
  store.add(top);
  const jobset = await createJobset(pool, 'viz', `big${steps}`);
  const buildId = await queueBuild(pool, jobset, top.drvPath, 'everything', top.system, top.outputs);
  // No machine at first: the steps wait (an hour before "unsupported") until addMachines.
  const { runtime } = await startRuntime(pool, store, { maxUnsupportedTimeInS: 3600, retryInterval: 60 });
  await runtime.initialLoad;
  const lifecycle = new Lifecycle();
  lifecycle.to('running');
  const router = new Router(() => {
    throw new HttpError(403, 'read-only');
  });
  const feed = await registerViewerRoutes(router, { lifecycle, scheduler: () => runtime.scheduler, startedAt: Date.now(), db: pool });
  const http: HttpApi = await startHttpApi(router, '127.0.0.1:0', quietLog);
  let machines = 0;
  return {
    base: `http://127.0.0.1:${http.port}`,
    buildId,
    runtime,
    feed,
    addMachines(count, jobs, buildMs) {
      const sim = new SimulatedBuilder({ store, durationMs: () => buildMs });
      for (let k = 0; k < count; k++) runtime.scheduler.addMachine(machineRecord(`sim${++machines}`, { maxJobs: jobs }), sim);
    },
    async stop() {
      await http.close();
      await runtime.stop(0);
    },
  };
}
