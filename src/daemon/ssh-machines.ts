import { MachineActor } from '../actors/machine-actor.ts';
import { DEFAULT_THRESHOLDS, type MachineSpec } from '../actors/machine-record.ts';
import type { Scheduler } from '../actors/scheduler.ts';
import { SshMachine } from '../builder/ssh-machine.ts';
import { MachinesFileWatcher, type MachineSpec as MachinesFileSpec, type MachinesChange } from '../config/machines-file.ts';
import { builderLifecycle } from '../machines/index.ts';
import type { Logger } from '../util/logger.ts';

export interface SshMachinesOptions {
  readonly files: readonly string[];
  readonly checkIntervalS: number;
  readonly hydraDataDir: string;
  readonly scheduler: Scheduler;
  readonly log: Logger;
}

/** A machines-file line as the dispatcher's machine spec (mandatory features count as supported, as in Hydra). */
function specOf(spec: MachinesFileSpec): MachineSpec {
  return {
    id: spec.name,
    systems: new Set(spec.systems),
    features: new Set([...spec.supportedFeatures, ...spec.mandatoryFeatures]),
    mandatoryFeatures: new Set(spec.mandatoryFeatures),
    maxJobs: spec.maxJobs,
    speedFactor: spec.speedFactor,
    // An SSH machine reports no cores, bogomips or load: scored by its speed factor, free by its job slots.
    cpuCount: 1,
    bogomips: 1,
    thresholds: DEFAULT_THRESHOLDS,
  };
}

/**
 * The SSH machines of the machines files, kept in the scheduler as the files
 * change: a machine added to a file joins; one removed takes no new steps
 * and leaves once its running steps end; one whose columns changed is
 * drained and re-added with the new ones (docs/SSH-MACHINES.md).
 */
export class SshMachines {
  private readonly ports = new Map<string, SshMachine>();
  /** Machines draining → the spec to add once they are gone (a changed line), or null (a removed one). */
  private readonly draining = new Map<string, MachinesFileSpec | null>();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly watcher: MachinesFileWatcher;

  constructor(private readonly o: SshMachinesOptions) {
    this.watcher = new MachinesFileWatcher(o.files, (c) => this.changed(c));
  }

  start(): void {
    this.o.log.info({ files: this.o.files }, 'following machines files');
    this.watcher.start(this.o.checkIntervalS * 1000);
  }

  /** Re-reads the machines files now (SIGHUP), whether or not they look changed. */
  reread(): void {
    this.o.log.info({ files: this.o.files }, 're-reading machines files');
    this.watcher.check(true);
  }

  /** Stops following the files (running steps go on). */
  stopWatching(): void {
    this.watcher.stop();
  }

  /** Closes the machines' idle connections; call once the scheduler has drained. */
  async close(): Promise<void> {
    this.watcher.stop();
    if (this.sweeper) clearInterval(this.sweeper);
    await Promise.all([...this.ports.values()].map((p) => p.close()));
  }

  private changed(c: MachinesChange): void {
    for (const e of c.errors) this.o.log.warn({ file: e.file, line: e.line, code: e.code }, e.reason);
    for (const spec of c.added) {
      // A name removed and listed again before its drain ended comes back once it has.
      if (this.draining.has(spec.name)) this.draining.set(spec.name, spec);
      else this.add(spec);
    }
    for (const spec of c.changed) this.drain(spec.name, spec);
    for (const spec of c.removed) this.drain(spec.name, null);
  }

  private add(spec: MachinesFileSpec): void {
    const port = new SshMachine({ spec, hydraDataDir: this.o.hydraDataDir, log: this.o.log.child({ machine: spec.name }) });
    this.ports.set(spec.name, port);
    const machine = new MachineActor(specOf(spec), { idleSince: Date.now() });
    this.o.scheduler.addMachine(machine, port);
    machine.send({ type: 'JOINED' });
    this.o.log.info({ machine: spec.name, systems: spec.systems, maxJobs: spec.maxJobs, file: spec.file, line: spec.line }, 'SSH machine added');
  }

  private drain(name: string, then: MachinesFileSpec | null): void {
    const m = this.o.scheduler.machine(name);
    // Dispatch takes only ready machines: a draining one gets no new step.
    if (m && builderLifecycle.next(m.state, 'DRAIN')) m.send({ type: 'DRAIN' });
    this.draining.set(name, then);
    this.o.log.info({ machine: name, running: m?.jobs.size ?? 0 }, then ? 'SSH machine changed: draining it' : 'SSH machine removed: draining it');
    this.sweep();
    if (this.draining.size > 0 && !this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), 1000);
      this.sweeper.unref();
    }
  }

  /** Removes drained machines (no running step left), adding their new specs. */
  private sweep(): void {
    for (const [name, then] of [...this.draining]) {
      const m = this.o.scheduler.machine(name);
      if (m && m.jobs.size > 0) continue;
      this.draining.delete(name);
      if (m) this.o.scheduler.removeMachine(name, m.state === 'draining' ? 'DRAINED' : 'REMOVE');
      void this.ports.get(name)?.close();
      this.ports.delete(name);
      this.o.log.info({ machine: name }, 'SSH machine left');
      if (then) this.add(then);
    }
    if (this.draining.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }
}
