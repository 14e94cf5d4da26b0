import type pg from 'pg';
import type { Queryable } from './chunks.ts';
import { notifyStepFinished, notifyStepStarted } from './notify.ts';
import { prepared } from './sql.ts';
import { StepBusy, StepType, type StepTypeCode } from './status.ts';

/**
 * BuildSteps rows: one per attempt to build (or substitute) a derivation for
 * a build, numbered 1..n per build by `stepnr`.
 *
 * stepnr allocation. `max(stepnr) + 1` races when two transactions number a
 * step of the same build at once (upstream's runners retry on a duplicate
 * key). Here the allocating transaction first locks the build's Builds row
 * `for no key update` in its own statement (lock-build.sql), then inserts
 * with max + 1 in the next one: a second transaction waits on the lock until
 * the first commits, and its insert statement, which starts after the wait,
 * sees the first one's row. This is a row lock rather than an advisory lock
 * because
 *  - it holds across processes and connections with no shared key space to
 *    agree on, and is exactly the lock finishing a build takes anyway;
 *  - failing 20,000 dependent builds locks their rows in one transaction for
 *    free (row locks live in the tuples), where 20,000 advisory locks would
 *    exhaust the shared lock table (max_locks_per_transaction);
 *  - `no key update` does not block foreign-key checks of rows that reference
 *    the build (they take `key share`), so Hydra's web UI and evaluator keep
 *    working beside it.
 * It relies on READ COMMITTED (PostgreSQL's default, what withTransaction
 * uses): under REPEATABLE READ the insert's snapshot would predate the wait.
 * The runner's own starts go in one statement instead (steps-started.sql,
 * via PgSchedulerDb.stepsStarted): it takes the same locks before inserting,
 * and when its snapshot predates the wait its insert fails on the primary
 * key and is retried, never numbering a step twice.
 */

export interface StepOutput {
  readonly name: string;
  /** Null for a content-addressed output not built yet. */
  readonly path: string | null;
}

export interface StartStep {
  buildId: number;
  drvPath: string;
  system: string | null;
  machine: string;
  startTime: number;
  /** StepBusy code; must be non-zero (a running step). */
  busy: number;
  type: StepTypeCode;
  outputs: readonly StepOutput[];
}

export interface FinishStep {
  buildId: number;
  stepnr: number;
  status: number;
  errorMsg: string | null;
  startTime: number;
  stopTime: number;
  machine: string;
  /** Milliseconds spent copying inputs and outputs. */
  overhead: number | null;
  timesBuilt: number | null;
  isNonDeterministic: boolean | null;
  /** Paths of outputs known only now (content-addressed). */
  outputs?: readonly { readonly name: string; readonly path: string }[];
  /** Only with status 13 (resolved); stored without the store directory. */
  resolvedDrvPath?: string | null;
  logFile: string | null;
}

/**
 * finishStep's arguments for a step that ended without a build result
 * (failed or aborted): no overhead, determinism unknown.
 */
export function unbuiltStep(
  a: { buildId: number; status: number; errorMsg: string | null; startTime: number; stopTime: number; machine: string },
  stepnr: number,
  timesBuilt: number | null,
  logFile: string | null,
): FinishStep {
  const { buildId, status, errorMsg, startTime, stopTime, machine } = a;
  return { buildId, stepnr, status, errorMsg, startTime, stopTime, machine, overhead: null, timesBuilt, isNonDeterministic: null, logFile };
}

export interface RecordStep {
  buildId: number;
  drvPath: string;
  type?: StepTypeCode;
  status: number;
  errorMsg?: string | null;
  startTime?: number | null;
  stopTime?: number | null;
  machine?: string;
  system?: string | null;
  /** The build under which the step really failed (cached/propagated failures). */
  propagatedFrom?: number | null;
  overhead?: number | null;
  timesBuilt?: number | null;
  isNonDeterministic?: boolean | null;
  /** Required with status 13 (resolved), forbidden otherwise (a check constraint). */
  resolvedDrvPath?: string | null;
  outputs?: readonly StepOutput[];
}

/** The columns of a BuildSteps row that both its writers and its readers name. */
export interface StepColumns {
  type: number;
  drvPath: string;
  busy: number;
  status: number | null;
  errorMsg: string | null;
  startTime: number | null;
  stopTime: number | null;
  machine: string;
  system: string | null;
  propagatedFrom: number | null;
  overhead: number | null;
  timesBuilt: number | null;
  resolvedDrvPath: string | null;
}

interface StepRow extends StepColumns {
  buildId: number;
  isNonDeterministic: boolean | null;
  outputs: readonly StepOutput[];
}

/** Store path without its directory: BuildSteps.resolvedDrvPath is stored so. */
function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Startup: every step a crashed run left busy becomes aborted (3). Returns how many. */
export async function abortLeftoverSteps(client: Queryable, now: number): Promise<number> {
  const res = await client.query(prepared('results/abort-leftover-steps'), [now]);
  return res.rowCount ?? 0;
}

/** Takes the lock that serializes stepnr allocation for `buildId` (see above). */
export async function lockBuild(client: pg.ClientBase, buildId: number): Promise<void> {
  const res = await client.query(prepared('results/lock-build'), [buildId]);
  if (res.rowCount !== 1) throw new Error(`build ${buildId} does not exist`);
}

async function insertStep(client: pg.ClientBase, row: StepRow): Promise<number> {
  await lockBuild(client, row.buildId);
  const { rows } = await client.query<{ stepnr: number }>(prepared('results/insert-step'), [
    row.buildId,
    row.type,
    row.drvPath,
    row.busy,
    row.status,
    row.errorMsg,
    row.startTime,
    row.stopTime,
    row.machine,
    row.system,
    row.propagatedFrom,
    row.overhead,
    row.timesBuilt,
    row.isNonDeterministic,
    row.resolvedDrvPath,
    row.outputs.map((o) => o.name),
    row.outputs.map((o) => o.path),
  ]);
  return rows[0]!.stepnr;
}

/**
 * A step attempt begins under `buildId`: inserts its busy row (status null)
 * and its outputs, and NOTIFYs `step_started`. Returns the stepnr.
 */
export async function startStep(client: pg.ClientBase, a: StartStep): Promise<number> {
  if (a.busy === StepBusy.Idle) throw new RangeError('a started step must be busy (non-zero)');
  const stepnr = await insertStep(client, {
    buildId: a.buildId,
    type: a.type,
    drvPath: a.drvPath,
    busy: a.busy,
    status: null,
    errorMsg: null,
    startTime: a.startTime,
    stopTime: null,
    machine: a.machine,
    system: a.system,
    propagatedFrom: null,
    overhead: null,
    timesBuilt: null,
    isNonDeterministic: null,
    resolvedDrvPath: null,
    outputs: a.outputs,
  });
  await notifyStepStarted(client, a.buildId, stepnr);
  return stepnr;
}

/** Progress of a running step. False when the row is not running (any more). */
export async function setStepBusy(client: Queryable, buildId: number, stepnr: number, busy: number): Promise<boolean> {
  if (busy === StepBusy.Idle) throw new RangeError('use finishStep to end a step');
  const res = await client.query(prepared('results/set-step-busy'), [buildId, stepnr, busy]);
  return res.rowCount === 1;
}

/**
 * The attempt ended: busy 0, its status and timings, content-addressed output
 * paths, then NOTIFY `step_finished` (build, stepnr, log file). False (and no
 * NOTIFY) when there is no such row.
 */
export async function finishStep(client: pg.ClientBase, a: FinishStep): Promise<boolean> {
  const outputs = a.outputs ?? [];
  const res = await client.query(prepared('results/finish-step'), [
    a.buildId,
    a.stepnr,
    a.status,
    a.errorMsg,
    a.startTime,
    a.stopTime,
    a.machine,
    a.overhead,
    a.timesBuilt,
    a.isNonDeterministic,
    a.resolvedDrvPath == null ? null : baseName(a.resolvedDrvPath),
    outputs.map((o) => o.name),
    outputs.map((o) => o.path),
  ]);
  if (res.rowCount !== 1) return false;
  await notifyStepFinished(client, a.buildId, a.stepnr, a.logFile ?? '');
  return true;
}

/**
 * Inserts a step that is already over (busy 0): a cached failure (8), a
 * failure propagated from another build, or a CA step resolved to another
 * derivation (13, with resolvedDrvPath). Same stepnr allocation as
 * startStep. No NOTIFY: nothing ran.
 */
export async function recordStep(client: pg.ClientBase, a: RecordStep): Promise<number> {
  return insertStep(client, {
    buildId: a.buildId,
    type: a.type ?? StepType.Build,
    drvPath: a.drvPath,
    busy: StepBusy.Idle,
    status: a.status,
    errorMsg: a.errorMsg ?? null,
    startTime: a.startTime ?? null,
    stopTime: a.stopTime ?? null,
    machine: a.machine ?? '',
    system: a.system ?? null,
    propagatedFrom: a.propagatedFrom ?? null,
    overhead: a.overhead ?? null,
    timesBuilt: a.timesBuilt ?? null,
    isNonDeterministic: a.isNonDeterministic ?? null,
    resolvedDrvPath: a.resolvedDrvPath == null ? null : baseName(a.resolvedDrvPath),
    outputs: a.outputs ?? [],
  });
}
