import { join } from 'node:path';
import { parseProvisionerConfig, type ProvisionerConfig } from '../config/provisioner-config.ts';
import { hostSystem } from '../nix/host-system.ts';
import type { ProvisionBackend } from '../provision/backend.ts';
import type { PassReport } from '../provision/provisioner.ts';
import { makeBackend, runProvisioner } from '../provision/run.ts';
import type { Logger } from '../util/logger.ts';

/** The demo's system type: at most two builders, two runnables each, idle ones destroyed after five seconds. */
export const DEMO_PROVISION = Object.freeze({ maxMachines: 2, runnablesPerMachine: 2, maxJobs: 2, gracePeriod: 5 });

/**
 * `hydrant demo --provision`: no builders at first; `hydrant provision`'s
 * loop (the local backend) starts them as the jobset needs them and
 * destroys them once idle past the grace period. The builders die with the
 * demo, and stop() destroys whatever is left.
 */
export class DemoProvisioner {
  readonly config: ProvisionerConfig;
  readonly #backend: ProvisionBackend;
  readonly #abort = new AbortController();
  readonly #lines: string[] = [];
  #loop: Promise<unknown> | null = null;
  #last = '';

  constructor(o: { stateDir: string; grpcPort: number; httpPort: number; tokenFile: string; privateStores: boolean; log: Logger }) {
    this.config = parseProvisionerConfig(
      {
        stateDir: join(o.stateDir, 'provisioner'),
        statusUrl: `http://127.0.0.1:${o.httpPort}`,
        interval: 1,
        maxCreatesPerPass: 2,
        joinTimeout: 120,
        backend: { type: 'local', server: `127.0.0.1:${o.grpcPort}`, tokenFile: o.tokenFile, privateStores: o.privateStores },
        systemTypes: { [hostSystem()]: DEMO_PROVISION },
      },
      'hydrant demo --provision',
    );
    this.#backend = makeBackend(this.config, { dieWithParent: true });
    this.log = o.log.child({ role: 'provisioner' });
  }

  private readonly log: Logger;

  start(): void {
    this.#loop = runProvisioner(this.config, this.log, { once: false, signal: this.#abort.signal, backend: this.#backend, onReport: (r) => this.#note(r) }).catch((err: unknown) => {
      this.#lines.push(`  provisioner: stopped: ${(err as Error).message}`);
    });
  }

  #note(r: PassReport): void {
    const t = r.types[hostSystem()];
    if (!t) return;
    const joined = r.machines.filter((m) => m.state === 'active' || m.state === 'idle').length;
    const line = `  provisioner: ${t.runnable} runnable, ${t.wanted} builder${t.wanted === 1 ? '' : 's'} wanted, ${joined} joined, ${t.running} up`;
    if (line !== this.#last) this.#lines.push(line);
    this.#last = line;
  }

  /** What changed since the last call, one line each. */
  drain(): string[] {
    return this.#lines.splice(0);
  }

  /** Ends the loop, then destroys every builder it made. */
  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#loop;
    for (const m of await this.#backend.list()) {
      const type = m.type ?? hostSystem();
      const t = this.config.systemTypes[type];
      await this.#backend.destroy({ id: m.id, type, system: t?.system ?? type, features: [], maxJobs: 1, speedFactor: 1, tag: this.config.tag });
    }
  }
}
