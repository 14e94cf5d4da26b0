import { assign, raise, setup } from 'xstate';

/**
 * The lifecycle of one build machine (a connected builder agent; Hydra calls
 * these "machines"). Each machine runs as a live actor of this definition
 * (`src/actors/machine-actor.ts`): its context holds the machine's health
 * and latest load report, and it owns two timers, both delayed transitions:
 * the failure backoff and the reconnect grace period.
 *
 *   joining ─JOINED─► ready ⇄ busy        (FULL / SLOT_FREE)
 *   ready|busy|disabled ─FAILURES_EXCEEDED─► disabled ─BACKOFF_ELAPSED─► ready
 *   ready|busy|disabled ─DISCONNECTED─► unreachable ─RECONNECTED─► ready
 *                                                  └GRACE_EXPIRED─► gone
 *   ready|busy|disabled ─DRAIN─► draining ─DRAINED─► gone
 *   joining|draining ─DISCONNECTED─► gone;  any ─REMOVE─► gone
 *
 * BACKOFF_ELAPSED and GRACE_EXPIRED are raised by the actor's own timers
 * (`after`), with the delays taken from its context. REPORTED (a ping's load
 * figures) and SUCCEEDED (a job ended well: the failure count starts over)
 * change only the context.
 */
export const BUILDER_EVENTS = [
  'JOINED',
  'FULL',
  'SLOT_FREE',
  'FAILURES_EXCEEDED',
  'BACKOFF_ELAPSED',
  'DISCONNECTED',
  'RECONNECTED',
  'GRACE_EXPIRED',
  'DRAIN',
  'DRAINED',
  'REMOVE',
] as const;
export type BuilderEventType = (typeof BUILDER_EVENTS)[number];

export const BUILDER_STATES = ['joining', 'ready', 'busy', 'disabled', 'unreachable', 'draining', 'gone'] as const;
export type BuilderState = (typeof BUILDER_STATES)[number];

/** One PSI line, percent (avg10/60/300 as /proc/pressure writes them). */
export interface PsiFigures {
  avg10: number;
  avg60: number;
  avg300: number;
}

/** The PSI lines Hydra's machine status shows; null where the builder reported none. */
export interface PsiState {
  cpuSome: PsiFigures | null;
  memSome: PsiFigures | null;
  memFull: PsiFigures | null;
  ioSome: PsiFigures | null;
  ioFull: PsiFigures | null;
  irqFull: PsiFigures | null;
}

/** The latest figures a builder reported (dynamic capacity, disk space, and what the status shows). */
export interface MachineLoad {
  load1: number;
  /** avg10 of the `some` lines: what the dynamic capacity rule compares. */
  cpuPressure: number;
  memPressure: number;
  ioPressure: number;
  buildDirFreePercent: number;
  storeFreePercent: number;
  load5: number;
  load15: number;
  memUsedBytes: number;
  /** 0: not reported yet (the Join's figure stands). */
  memTotalBytes: number;
  /** null until a builder reports PSI. */
  psi: PsiState | null;
}

export const IDLE_LOAD: MachineLoad = Object.freeze({
  load1: 0,
  cpuPressure: 0,
  memPressure: 0,
  ioPressure: 0,
  buildDirFreePercent: 100,
  storeFreePercent: 100,
  load5: 0,
  load15: 0,
  memUsedBytes: 0,
  memTotalBytes: 0,
  psi: null,
});

/**
 * Hydra's machine disable formula (C++ runner, `builder.cc`): a failure counts
 * only if it is the first or the last counted one is more than a window ago;
 * a counted failure raises the count (at most 4) and disables the machine for
 * retryInterval × retryBackoff^(count − 1) s plus a random jitter. Hydra's
 * constants are interval 60 s, factor 3, window 30 s and jitter `rand() % 30`
 * s; the window and the jitter bound are half the interval here, which is
 * exactly Hydra's at the default interval and keeps a short test interval short.
 */
export interface BackoffPolicy {
  intervalS: number;
  factor: number;
}
const DEFAULT_BACKOFF: BackoffPolicy = { intervalS: 60, factor: 3 };
export const MAX_COUNTED_FAILURES = 4;

/** Failures closer than this to the last counted one are not counted (Hydra: 30 s). */
export function failureWindowMs(p: BackoffPolicy): number {
  return (p.intervalS * 1000) / 2;
}

/** The disable time after the `failures`-th counted failure; `jitter` ∈ [0, 1) spreads it over half an interval. */
export function backoffMs(failures: number, p: BackoffPolicy, jitter = 0): number {
  const n = Math.min(Math.max(failures, 1), MAX_COUNTED_FAILURES);
  return Math.round(p.intervalS * p.factor ** (n - 1) * 1000) + Math.floor(jitter * failureWindowMs(p));
}

/** Whether a failure at `at` counts (Hydra: the first one, or more than the window after the last counted one). */
export function failureCounts(ctx: Pick<BuilderContext, 'failures' | 'lastFailure'>, at: number, p: BackoffPolicy): boolean {
  return !ctx.failures || at - ctx.lastFailure > failureWindowMs(p);
}

export interface BuilderContext {
  /** Machine-fault failures in a row. */
  failures: number;
  /** Epoch ms of the last one (0: none). */
  lastFailure: number;
  /** The current backoff, and when it ends (epoch ms). */
  backoffMs: number;
  disabledUntil: number;
  /** How long an unreachable machine keeps its jobs. */
  graceMs: number;
  load: MachineLoad;
  /** Epoch ms of the latest load report (0: none yet). */
  reportedAt: number;
}

export interface BuilderInput {
  graceMs?: number;
  load?: MachineLoad;
}

/** Events; `at` is epoch ms (the sender's clock: the definition stays pure). */
export type BuilderEvent =
  | { type: 'FAILURES_EXCEEDED'; at?: number; policy?: BackoffPolicy; /** ∈ [0, 1): the sender's random draw for the jitter. */ jitter?: number }
  | { type: 'REPORTED'; at?: number; load: MachineLoad }
  | { type: 'SUCCEEDED' }
  | { type: Exclude<BuilderEventType, 'FAILURES_EXCEEDED'> };

const usable = {
  // A failure inside the window after the last counted one changes nothing (Hydra).
  FAILURES_EXCEEDED: { guard: 'failureCounts', target: 'disabled', actions: 'recordFailure' },
  DISCONNECTED: 'unreachable',
  DRAIN: 'draining',
  REMOVE: 'gone',
} as const;

export const builderMachine = setup({
  types: {} as { context: BuilderContext; events: BuilderEvent; input: BuilderInput | undefined },
  actions: {
    recordFailure: assign(({ context, event }) => {
      const e = event as Extract<BuilderEvent, { type: 'FAILURES_EXCEEDED' }>;
      const at = e.at ?? 0;
      const failures = Math.min((context.failures ?? 0) + 1, MAX_COUNTED_FAILURES);
      const delay = backoffMs(failures, e.policy ?? DEFAULT_BACKOFF, e.jitter ?? 0);
      return { failures, lastFailure: at, backoffMs: delay, disabledUntil: at + delay };
    }),
  },
  guards: {
    failureCounts: ({ context, event }) => {
      const e = event as Extract<BuilderEvent, { type: 'FAILURES_EXCEEDED' }>;
      // Without a time there is no window to apply: the failure counts.
      return e.at === undefined || failureCounts(context, e.at, e.policy ?? DEFAULT_BACKOFF);
    },
  },
  delays: {
    backoff: ({ context }) => context.backoffMs ?? 0,
    grace: ({ context }) => context.graceMs ?? 0,
  },
}).createMachine({
  id: 'builder',
  initial: 'joining',
  context: ({ input }) => ({
    failures: 0,
    lastFailure: 0,
    backoffMs: 0,
    disabledUntil: 0,
    graceMs: input?.graceMs ?? 0,
    load: input?.load ?? IDLE_LOAD,
    reportedAt: 0,
  }),
  on: {
    REPORTED: { actions: assign(({ event }) => ({ load: event.load, reportedAt: event.at ?? 0 })) },
    SUCCEEDED: { actions: assign({ failures: 0 }) },
  },
  states: {
    joining: { on: { JOINED: 'ready', DISCONNECTED: 'gone', REMOVE: 'gone' } },
    ready: { on: { FULL: 'busy', ...usable } },
    busy: { on: { SLOT_FREE: 'ready', ...usable } },
    disabled: {
      after: { backoff: { actions: raise({ type: 'BACKOFF_ELAPSED' }) } },
      on: {
        BACKOFF_ELAPSED: 'ready',
        // Another failure restarts the backoff, longer (Hydra sets disabledUntil anew on each failure it counts).
        FAILURES_EXCEEDED: { guard: 'failureCounts', target: 'disabled', reenter: true, actions: 'recordFailure' },
        DISCONNECTED: 'unreachable',
        DRAIN: 'draining',
        REMOVE: 'gone',
      },
    },
    unreachable: {
      after: { grace: { actions: raise({ type: 'GRACE_EXPIRED' }) } },
      on: { RECONNECTED: 'ready', GRACE_EXPIRED: 'gone', REMOVE: 'gone' },
    },
    draining: { on: { DRAINED: 'gone', DISCONNECTED: 'gone', REMOVE: 'gone' } },
    gone: { type: 'final' },
  },
});
