import type { BackendMachine, MachineDescription, ProvisionBackend } from '../../src/provision/backend.ts';

/**
 * An in-memory cloud for the provisioner's property test: machines are
 * entries of a map. `failCreates` makes creates fail; `crashAfter` calls
 * kills the provisioner that uses it (every later call never answers, as a
 * SIGKILLed process never sees one), after the backend has done the work of
 * the call that crashed or before (`crashBefore`).
 */
export class SimBackend implements ProvisionBackend {
  readonly machines = new Map<string, { type: string; state: 'running' | 'stopped'; createdAt: number }>();
  failCreates = false;
  crashAfter = Infinity;
  crashBefore = false;
  calls = 0;
  creates = 0;
  /** Most machines of one type that ever existed at once. */
  readonly peak = new Map<string, number>();

  constructor(private readonly now: () => number) {}

  #step(): boolean {
    this.calls++;
    return this.calls > this.crashAfter;
  }

  #hang<T>(): Promise<T> {
    return new Promise<T>(() => {});
  }

  async create(d: MachineDescription): Promise<BackendMachine> {
    if (this.#step()) {
      if (!this.crashBefore && !this.machines.has(d.id)) this.#add(d);
      return this.#hang();
    }
    if (this.failCreates) throw new Error('quota exceeded');
    if (!this.machines.has(d.id)) this.#add(d);
    return { id: d.id, state: 'running', type: d.type };
  }

  #add(d: MachineDescription): void {
    this.creates++;
    this.machines.set(d.id, { type: d.type, state: 'running', createdAt: this.now() });
    const n = [...this.machines.values()].filter((m) => m.type === d.type).length;
    this.peak.set(d.type, Math.max(this.peak.get(d.type) ?? 0, n));
  }

  async start(d: MachineDescription): Promise<void> {
    if (this.#step()) return this.#hang();
    const m = this.machines.get(d.id);
    if (m) m.state = 'running';
  }

  async stop(d: MachineDescription): Promise<void> {
    if (this.#step()) return this.#hang();
    const m = this.machines.get(d.id);
    if (m) m.state = 'stopped';
  }

  async destroy(d: MachineDescription): Promise<void> {
    if (this.#step()) {
      if (!this.crashBefore) this.machines.delete(d.id);
      return this.#hang();
    }
    this.machines.delete(d.id);
  }

  async list(): Promise<BackendMachine[]> {
    if (this.#step()) return this.#hang();
    return [...this.machines].map(([id, m]) => ({ id, state: m.state, type: m.type }));
  }
}
