import { randomBytes } from 'node:crypto';
import { createActor, type Actor } from 'xstate';
import type { ProvisionerConfig, SystemTypeConfig } from '../config/provisioner-config.ts';
import { provisionedMachine, PROVISIONED_EXISTING, PROVISIONED_RUNNING, type ProvisionedEventType, type ProvisionedState } from '../machines/provisioned-machine.ts';
import type { Logger } from '../util/logger.ts';
import type { BackendMachine, MachineDescription, ProvisionBackend } from './backend.ts';
import { machinesFileText, publishMachinesFile, type SshMachineLine } from './machines-file-writer.ts';
import { planType, type PlanAction } from './plan.ts';
import type { RunnerStatus } from './runner-status.ts';
import { StateStore, type MachineRecord } from './state-store.ts';
import { countedRunnables, wantedMachines } from './wanted.ts';

type MachineActor = Actor<typeof provisionedMachine>;

interface Live {
  readonly actor: MachineActor;
  readonly record: MachineRecord;
}

export interface ProvisionerCounters {
  created: number;
  started: number;
  stopped: number;
  destroyed: number;
  failed: number;
}

export interface PassReport {
  readonly status: string;
  readonly types: Record<string, { runnable: number; wanted: number; running: number; existing: number }>;
  readonly machines: { id: string; type: string; state: ProvisionedState; reason: string; attempts: number; name: string }[];
  readonly counters: ProvisionerCounters;
}

export interface ProvisionerDeps {
  readonly config: ProvisionerConfig;
  readonly backend: ProvisionBackend;
  readonly readStatus: () => Promise<RunnerStatus>;
  readonly log: Logger;
  readonly now?: () => number;
}

/** A machine id: the tag, the type made safe for a host name, and random hex (no counter to lose in a crash). */
function newId(tag: string, type: string): string {
  return `${tag}-${type.replace(/[^A-Za-z0-9]+/g, '-').replace(/-+$/, '')}-${randomBytes(4).toString('hex')}`;
}

/**
 * The provisioner (docs/PROVISIONER.md): one pass reads the runner's
 * status and the backend's list, brings every machine's live actor in line
 * with them (adopting what a killed provisioner left), then plans each
 * system type (src/provision/plan.ts) and carries the plan out. Each
 * machine's snapshot is saved before the backend is asked to act on it.
 */
export class Provisioner {
  readonly #c: ProvisionerConfig;
  readonly #backend: ProvisionBackend;
  readonly #readStatus: () => Promise<RunnerStatus>;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #store: StateStore;
  readonly #machines = new Map<string, Live>();
  readonly counters: ProvisionerCounters = { created: 0, started: 0, stopped: 0, destroyed: 0, failed: 0 };
  #lastMachinesFile: string | null = null;
  #lastReport: PassReport | null = null;

  constructor(deps: ProvisionerDeps) {
    this.#c = deps.config;
    this.#backend = deps.backend;
    this.#readStatus = deps.readStatus;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
    this.#store = new StateStore(this.#c.stateDir);
    for (const p of this.#store.load((file, why) => this.#log.warn({ file, why }, 'unreadable machine snapshot skipped'))) {
      const actor = createActor(provisionedMachine, { snapshot: p.snapshot as never }).start();
      this.#machines.set(p.record.id, { actor, record: p.record });
    }
    if (this.#machines.size > 0) this.#log.info({ machines: this.#machines.size }, 'machine snapshots restored');
  }

  /** Every machine's state (for tests and the status). */
  states(): Map<string, ProvisionedState> {
    return new Map([...this.#machines].map(([id, m]) => [id, this.#state(m)]));
  }

  get lastReport(): PassReport | null {
    return this.#lastReport;
  }

  #state(m: Live): ProvisionedState {
    return m.actor.getSnapshot().value as ProvisionedState;
  }

  #persist(m: Live): void {
    if (this.#state(m) === 'gone') {
      this.#store.remove(m.record.id);
      this.#machines.delete(m.record.id);
      m.actor.stop();
    } else this.#store.save({ record: m.record, snapshot: m.actor.getPersistedSnapshot() });
  }

  /** Sends `event` if the machine accepts it in its state (else logs and returns false), records why, and saves the snapshot. */
  #send(m: Live, event: ProvisionedEventType, reason: string): boolean {
    const before = this.#state(m);
    if (!m.actor.getSnapshot().can({ type: event })) {
      this.#log.warn({ machine: m.record.id, state: before, event }, 'event not accepted in this state');
      return false;
    }
    m.actor.send({ type: event });
    const after = this.#state(m);
    if (after !== before) m.record.since = this.#now();
    m.record.reason = reason;
    this.#persist(m);
    this.#log.info({ machine: m.record.id, type: m.record.type, from: before, to: after, reason }, `machine ${after}`);
    return true;
  }

  #describe(r: MachineRecord): MachineDescription {
    const t = this.#c.systemTypes[r.type];
    return {
      id: r.id,
      type: r.type,
      system: t?.system ?? r.type.split(':')[0]!,
      features: t?.features ?? [],
      maxJobs: t?.maxJobs ?? 1,
      speedFactor: t?.speedFactor ?? 1,
      tag: this.#c.tag,
    };
  }

  #backoffMs(attempts: number): number {
    return Math.min(this.#c.retryMin * 2 ** Math.max(0, attempts - 1), this.#c.retryMax) * 1000;
  }

  #failed(m: Live, op: string, err: unknown): void {
    const why = (err as Error)?.message ?? String(err);
    this.counters.failed++;
    m.record.attempts++;
    m.record.nextRetryAt = this.#now() + this.#backoffMs(m.record.attempts);
    this.#log.warn({ machine: m.record.id, op, attempts: m.record.attempts, retryInMs: m.record.nextRetryAt - this.#now(), err: why }, `${op} failed`);
    this.#send(m, 'FAILED', `${op} failed (attempt ${m.record.attempts}): ${why}`);
  }

  /** One pass. A runner that is down changes nothing: its empty queue is not a reason to destroy machines. */
  async pass(): Promise<PassReport> {
    const status = await this.#readStatus();
    const now = this.#now();
    if (status.status !== 'up') {
      this.#log.warn({ status: status.status }, 'runner status unavailable: no changes this pass');
      return this.#report(status, {});
    }
    let listed: BackendMachine[];
    try {
      listed = (await this.#backend.list()).filter((b) => b.id.startsWith(`${this.#c.tag}-`));
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'backend list failed: no changes this pass');
      return this.#report(status, {});
    }
    this.#reconcile(listed, now);
    this.#observe(status, now);

    const actions: Promise<void>[] = [];
    let budget = this.#c.maxCreatesPerPass;
    // Retries first: a machine already counted is tried again before any new one.
    for (const m of [...this.#machines.values()]) {
      const s = this.#state(m);
      if (s === 'backoff' && m.record.nextRetryAt <= now && budget > 0) {
        budget--;
        if (this.#send(m, 'RETRY', `create retried (attempt ${m.record.attempts + 1})`)) actions.push(this.#create(m));
      } else if (s === 'destroying' && m.record.nextRetryAt <= now) actions.push(this.#destroy(m));
      else if (s === 'requested') {
        // Cancelled before it was asked for, or left by a kill between its request and its create.
        this.#send(m, 'CANCEL', 'never created');
      }
    }
    const wanted: Record<string, number> = {};
    for (const [type, t] of Object.entries(this.#c.systemTypes)) {
      const allowed = wantedMachines(t, countedRunnables(status.machineTypes[type]));
      wanted[type] = allowed;
      const mine = [...this.#machines.values()].filter((m) => m.record.type === type);
      const plan = planType({
        allowed,
        maxMachines: t.maxMachines,
        stopOnIdle: t.stopOnIdle,
        gracePeriodMs: t.gracePeriod * 1000,
        now,
        budget,
        machines: mine.map((m) => ({ id: m.record.id, state: this.#state(m), idleSince: m.record.idleSince })),
      });
      for (const a of plan) {
        if (a.kind === 'create' || a.kind === 'start') budget--;
        actions.push(this.#act(type, a));
      }
    }
    await Promise.all(actions);
    await this.#writeMachinesFile();
    return this.#report(status, wanted);
  }

  #act(type: string, a: PlanAction): Promise<void> {
    if (a.kind === 'create') {
      const record: MachineRecord = { id: newId(this.#c.tag, type), type, attempts: 0, nextRetryAt: 0, since: this.#now(), idleSince: 0, reason: 'wanted' };
      const m: Live = { actor: createActor(provisionedMachine).start(), record };
      this.#machines.set(record.id, m);
      this.#persist(m); // requested: saved before anything is asked of the backend
      if (!this.#send(m, 'CREATE', 'runnable steps want it')) return Promise.resolve();
      return this.#create(m);
    }
    const m = this.#machines.get(a.id)!;
    switch (a.kind) {
      case 'cancel':
        this.#send(m, 'CANCEL', 'no longer wanted');
        return Promise.resolve();
      case 'start':
        if (!this.#send(m, 'START', 'runnable steps want it again')) return Promise.resolve();
        return this.#call(m, 'start', () => this.#backend.start(this.#describe(m.record)), 'STARTED', () => this.counters.started++);
      case 'stop':
        if (!this.#send(m, 'STOP', 'idle past its grace period (stopOnIdle)')) return Promise.resolve();
        return this.#call(m, 'stop', () => this.#backend.stop(this.#describe(m.record)), 'STOPPED', () => this.counters.stopped++);
      case 'destroy':
        if (!this.#send(m, 'DESTROY', 'idle past its grace period')) return Promise.resolve();
        return this.#destroy(m);
    }
  }

  async #call(m: Live, op: string, f: () => Promise<void>, done: ProvisionedEventType, count: () => void): Promise<void> {
    try {
      await f();
    } catch (err) {
      this.#failed(m, op, err);
      return;
    }
    m.record.attempts = 0;
    count();
    this.#send(m, done, `${op} done`);
  }

  #destroy(m: Live): Promise<void> {
    return this.#call(m, 'destroy', () => this.#backend.destroy(this.#describe(m.record)), 'DESTROYED', () => this.counters.destroyed++);
  }

  async #create(m: Live): Promise<void> {
    let answer: BackendMachine;
    try {
      answer = await this.#backend.create(this.#describe(m.record));
    } catch (err) {
      this.#failed(m, 'create', err);
      return;
    }
    m.record.attempts = 0;
    this.#learn(m, answer);
    this.counters.created++;
    this.#send(m, 'CREATED', 'created; waiting for it to join');
  }

  #learn(m: Live, b: BackendMachine): void {
    if (b.sshName !== undefined) m.record.sshName = b.sshName;
    if (b.hostKey !== undefined) m.record.hostKey = b.hostKey;
  }

  /** Brings the actors in line with what the backend has (after a crash, or a machine that went away behind our back). */
  #reconcile(listed: readonly BackendMachine[], now: number): void {
    const byId = new Map(listed.map((b) => [b.id, b]));
    for (const m of [...this.#machines.values()]) {
      const b = byId.get(m.record.id);
      byId.delete(m.record.id);
      const s = this.#state(m);
      const running = b?.state === 'running';
      switch (s) {
        case 'creating':
          // Only after a kill mid-create: passes wait for their creates. Made: on to joining; else asked again now.
          if (running) {
            this.#learn(m, b!);
            this.#send(m, 'CREATED', 'found created after a restart');
          } else {
            m.record.nextRetryAt = now;
            this.#send(m, 'FAILED', 'create interrupted; asked again');
          }
          break;
        case 'backoff':
          if (running) {
            this.#learn(m, b!);
            this.#send(m, 'CREATED', 'found created');
          }
          break;
        case 'starting':
          this.#send(m, running ? 'STARTED' : 'FAILED', running ? 'found started after a restart' : 'start interrupted');
          break;
        case 'stopping':
          if (!b) this.#send(m, 'LOST', 'no longer listed by the backend');
          else this.#send(m, running ? 'FAILED' : 'STOPPED', running ? 'stop interrupted' : 'found stopped after a restart');
          break;
        case 'destroying':
          if (!b) this.#send(m, 'DESTROYED', 'no longer listed by the backend');
          break;
        case 'joining':
        case 'active':
        case 'idle':
          if (!b) this.#send(m, 'LOST', 'no longer listed by the backend');
          else if (!running) {
            // Stopped behind our back (a builder that exited, a machine powered off): replaced, not waited for.
            this.counters.failed++;
            this.#send(m, 'DESTROY', 'stopped without being asked to');
          }
          break;
        case 'stopped':
          if (!b) this.#send(m, 'LOST', 'no longer listed by the backend');
          break;
        default:
          break;
      }
    }
    // Listed but unknown: made by a provisioner killed before it saved them, or whose state was lost. Adopted, never duplicated.
    for (const b of byId.values()) {
      const type = b.type !== undefined && this.#c.systemTypes[b.type] ? b.type : null;
      const record: MachineRecord = { id: b.id, type: type ?? b.type ?? 'unknown', attempts: 0, nextRetryAt: 0, since: now, idleSince: 0, reason: 'adopted' };
      const m: Live = { actor: createActor(provisionedMachine).start(), record };
      this.#learn(m, b);
      this.#machines.set(b.id, m);
      this.#send(m, 'ADOPT', 'found at the backend; adopted');
      // A stopped machine, or one of a type no longer configured, is not waited for.
      if (b.state !== 'running' || type === null) this.#send(m, 'DESTROY', type === null ? 'adopted, of no configured type' : 'adopted stopped');
    }
  }

  /** Joins, busy and idle machines, and machines that never joined, from the runner's status. */
  #observe(status: RunnerStatus, now: number): void {
    for (const m of [...this.#machines.values()]) {
      const s = this.#state(m);
      const seen = status.machines[m.record.sshName ?? m.record.id];
      if (s === 'joining') {
        if (seen) this.#send(m, 'JOINED', 'joined the runner');
        else if (now - m.record.since >= this.#c.joinTimeout * 1000) {
          this.counters.failed++;
          this.#send(m, 'DESTROY', `did not join within ${this.#c.joinTimeout} s`);
          continue;
        } else continue;
      }
      const st = this.#state(m);
      if (!seen || (st !== 'active' && st !== 'idle')) continue;
      const busy = (seen.currentJobs ?? 0) > 0;
      if (st === 'active' && !busy) {
        m.record.idleSince = now;
        this.#send(m, 'IDLE', 'no jobs');
      } else if (st === 'idle' && busy) this.#send(m, 'BUSY', 'building');
    }
  }

  async #writeMachinesFile(): Promise<void> {
    if (!this.#c.machinesFile && !this.#c.updateCommand) return;
    const lines: SshMachineLine[] = [];
    for (const m of this.#machines.values()) {
      const t: SystemTypeConfig | undefined = this.#c.systemTypes[m.record.type];
      const s = this.#state(m);
      if (!m.record.sshName || !t || !(s === 'joining' || s === 'active' || s === 'idle')) continue;
      lines.push({ sshName: m.record.sshName, hostKey: m.record.hostKey, type: t });
    }
    const text = machinesFileText(lines);
    if (text === this.#lastMachinesFile) return;
    try {
      await publishMachinesFile(text, this.#c);
      this.#lastMachinesFile = text;
      this.#log.info({ machines: lines.length }, 'machines file written');
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'machines file not written; tried again next pass');
    }
  }

  #report(status: RunnerStatus, wanted: Record<string, number>): PassReport {
    const types: PassReport['types'] = {};
    for (const type of Object.keys(this.#c.systemTypes)) {
      const mine = [...this.#machines.values()].filter((m) => m.record.type === type);
      types[type] = {
        runnable: countedRunnables(status.machineTypes[type]),
        wanted: wanted[type] ?? 0,
        running: mine.filter((m) => PROVISIONED_RUNNING.has(this.#state(m))).length,
        existing: mine.filter((m) => PROVISIONED_EXISTING.has(this.#state(m))).length,
      };
    }
    const machines = [...this.#machines.values()].map((m) => ({
      id: m.record.id,
      type: m.record.type,
      state: this.#state(m),
      reason: m.record.reason,
      attempts: m.record.attempts,
      name: m.record.sshName ?? m.record.id,
    }));
    this.#lastReport = { status: status.status, types, machines, counters: { ...this.counters } };
    return this.#lastReport;
  }

  /** Stops the actors (the machines stay as they are). */
  close(): void {
    for (const m of this.#machines.values()) m.actor.stop();
  }
}
