import type { Scheduler } from '../../actors/scheduler.ts';
import type { PlatformRecord } from '../../actors/model.ts';
import { seconds } from '../../status/views.ts';
import type { Router } from '../router.ts';

export interface ProvisionerStatusContext {
  /** null until the scheduler runs (the runner is then "down" to a provisioner). */
  scheduler(): Scheduler | null;
  readonly startedAt: number;
  readonly now?: () => number;
}

/** Hydra's machine type of a step: its system, then `:` and its required features, sorted (`local` for preferLocalBuild). */
export function systemType(p: PlatformRecord): string {
  const features = [...new Set([...p.features, ...(p.preferLocal ? ['local'] : [])])].sort();
  return features.length > 0 ? `${p.system}:${features.join(',')}` : p.system;
}

interface TypeStatus {
  runnable: number;
  running: number;
  /** Runnable steps whose only capable machines are all disabled (a Hydrant extension, read by `hydrant provision`). */
  waitingOnDisabled: number;
  /** Steps waiting out a retry delay; not in runnable, as in Hydra (a Hydrant extension). */
  retryWaiting: number;
  waitTime?: number;
  lastActive?: number;
}

/**
 * `GET /status/provisioner`: what `hydra-queue-runner --status` prints
 * (docs/SSH-MACHINES.md), the document hydra-provisioner reads through its
 * statusCommand (`hydrant status`): `status`, `uptime`, `machines` by name
 * and `machineTypes` by system type with runnable, running, waitTime (while
 * runnable > 0) and lastActive (while running = 0).
 */
export function registerProvisionerStatusRoutes(router: Router, ctx: ProvisionerStatusContext): void {
  // When each type last had a running step, as seen by these requests (Hydra's dispatcher notes it per round).
  const lastActive = new Map<string, number>();
  const now = ctx.now ?? Date.now;

  router.get('/status/provisioner', () => {
    const s = ctx.scheduler();
    if (!s) return { status: 'down' };
    const t = now();
    const types = new Map<string, TypeStatus>();
    const typeOf = (p: PlatformRecord): TypeStatus => {
      const key = systemType(p);
      let ts = types.get(key);
      if (!ts) types.set(key, (ts = { runnable: 0, running: 0, waitingOnDisabled: 0, retryWaiting: 0 }));
      return ts;
    };
    const waitMs = new Map<TypeStatus, number>();
    // Why a step waits depends only on its platform's machines: asked once per platform.
    const disabledOnly = new Map<string, boolean>();
    for (const step of s.graph.steps.values()) {
      if (step.state === 'retryWait') typeOf(step.platform).retryWaiting++;
      if (step.state !== 'runnable') continue;
      const ts = typeOf(step.platform);
      ts.runnable++;
      let disabled = disabledOnly.get(step.platform.key);
      if (disabled === undefined) disabledOnly.set(step.platform.key, (disabled = s.dispatcher.waitingReason(step).kind === 'machinesDisabled'));
      if (disabled) ts.waitingOnDisabled++;
      if (step.runnableSince > 0) waitMs.set(ts, (waitMs.get(ts) ?? 0) + Math.max(0, t - step.runnableSince));
    }
    for (const r of s.running()) typeOf(r.step.platform).running++;
    for (const [key, ts] of types) {
      if (ts.running > 0) lastActive.set(key, t);
      if (ts.runnable > 0) ts.waitTime = Math.floor((waitMs.get(ts) ?? 0) / 1000);
      if (ts.running === 0) ts.lastActive = seconds(lastActive.get(key) ?? 0);
    }
    const machines = Object.fromEntries(
      [...s.dispatcher.machines.values()].map((m) => {
        const st = s.machineStats.get(m.id);
        return [
          m.id,
          {
            enabled: m.state !== 'draining' && m.state !== 'gone',
            systemTypes: [...m.systems],
            supportedFeatures: [...m.features],
            mandatoryFeatures: [...m.mandatoryFeatures],
            maxJobs: m.maxJobs,
            speedFactor: m.speedFactor,
            currentJobs: m.jobs.size,
            ...(m.jobs.size === 0 && { idleSince: seconds(m.idleSince) }),
            nrStepsDone: st?.stepsDone ?? 0,
            totalStepTime: Math.floor((st?.totalStepMs ?? 0) / 1000),
            totalStepBuildTime: Math.floor((st?.totalBuildMs ?? 0) / 1000),
            disabledUntil: seconds(m.disabledUntil),
            lastFailure: seconds(m.lastFailure),
            consecutiveFailures: m.consecutiveFailures,
          },
        ];
      }),
    );
    return {
      status: 'up',
      time: seconds(t),
      uptime: Math.floor((t - ctx.startedAt) / 1000),
      pid: process.pid,
      nrQueuedBuilds: s.graph.builds.size,
      nrActiveSteps: s.activeJobs,
      nrUnfinishedSteps: s.graph.steps.size,
      nrRunnableSteps: s.dispatcher.stats.runnable,
      machines,
      machineTypes: Object.fromEntries(types),
    };
  });
}
