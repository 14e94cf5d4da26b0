import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Snapshot } from 'xstate';

/** What the provisioner knows of one machine besides its state. */
export interface MachineRecord {
  readonly id: string;
  readonly type: string;
  /** Failed creates (or starts, stops, destroys) in a row, for the backoff. */
  attempts: number;
  /** When a machine in backoff tries again (ms). */
  nextRetryAt: number;
  /** When it entered its current state (ms). */
  since: number;
  idleSince: number;
  /** Why it is in its state, for the status. */
  reason: string;
  sshName?: string;
  hostKey?: string;
}

export interface PersistedMachine {
  readonly record: MachineRecord;
  readonly snapshot: Snapshot<unknown>;
}

/**
 * One file per machine under `<stateDir>/machines`, written synchronously
 * (write, then rename; mode 600) before the provisioner acts on a new
 * state: a provisioner killed at any point finds every machine it may
 * have asked a backend for.
 */
export class StateStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'machines');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  save(m: PersistedMachine): void {
    const file = join(this.dir, `${m.record.id}.json`);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(m)}\n`, { mode: 0o600 });
    renameSync(tmp, file);
  }

  remove(id: string): void {
    rmSync(join(this.dir, `${id}.json`), { force: true });
  }

  /** Every saved machine; an unreadable file is reported through `onBad` and skipped (the backend's list still shows the machine). */
  load(onBad: (file: string, why: string) => void): PersistedMachine[] {
    const out: PersistedMachine[] = [];
    for (const name of readdirSync(this.dir)) {
      // A snapshot half written when a provisioner was killed: never renamed into place, so
      // never acted on (save comes before the backend is asked); the backend's list has the rest.
      if (name.endsWith('.json.tmp')) {
        rmSync(join(this.dir, name), { force: true });
        continue;
      }
      if (!name.endsWith('.json')) continue;
      try {
        const m = JSON.parse(readFileSync(join(this.dir, name), 'utf8')) as PersistedMachine;
        if (typeof m?.record?.id !== 'string' || typeof m.snapshot !== 'object') throw new Error('not a machine snapshot');
        out.push(m);
      } catch (err) {
        onBad(join(this.dir, name), (err as Error).message);
      }
    }
    return out;
  }
}
