import { PROVISIONED_EXISTING, PROVISIONED_RUNNING, type ProvisionedState } from '../machines/provisioned-machine.ts';

export interface PlannedMachine {
  readonly id: string;
  readonly state: ProvisionedState;
  /** When it went idle (ms), for the grace period. */
  readonly idleSince: number;
}

export type PlanAction = { kind: 'create' } | { kind: 'start'; id: string } | { kind: 'stop'; id: string } | { kind: 'destroy'; id: string } | { kind: 'cancel'; id: string };

export interface PlanInput {
  readonly allowed: number;
  readonly maxMachines: number;
  readonly stopOnIdle: boolean;
  readonly gracePeriodMs: number;
  readonly now: number;
  /** Creates and starts still allowed this pass (maxCreatesPerPass less what retries used). */
  readonly budget: number;
  readonly machines: readonly PlannedMachine[];
}

/**
 * One system type's moves for this pass (docs/PROVISIONER.md). Fewer
 * machines up than allowed: stopped ones are started first, then new ones
 * created, together at most `budget`, and never so many that more than
 * maxMachines exist. More up than allowed: machines not yet asked for are
 * cancelled, then idle ones past their grace period (longest idle first)
 * are stopped (stopOnIdle) or destroyed. Busy and joining machines stay.
 */
export function planType(p: PlanInput): PlanAction[] {
  const running = p.machines.filter((m) => PROVISIONED_RUNNING.has(m.state));
  const existing = p.machines.filter((m) => PROVISIONED_EXISTING.has(m.state)).length;
  const out: PlanAction[] = [];
  if (running.length < p.allowed) {
    let need = Math.min(p.allowed - running.length, p.budget);
    for (const m of p.machines) {
      if (need === 0) break;
      if (m.state !== 'stopped') continue;
      out.push({ kind: 'start', id: m.id });
      need--;
    }
    const creates = Math.min(need, p.maxMachines - existing);
    for (let i = 0; i < creates; i++) out.push({ kind: 'create' });
    return out;
  }
  let excess = running.length - p.allowed;
  for (const m of running) {
    if (excess === 0) break;
    if (m.state === 'requested') {
      out.push({ kind: 'cancel', id: m.id });
      excess--;
    }
  }
  const idle = running.filter((m) => m.state === 'idle' && p.now - m.idleSince >= p.gracePeriodMs).sort((a, b) => a.idleSince - b.idleSince);
  for (const m of idle) {
    if (excess === 0) break;
    out.push({ kind: p.stopOnIdle ? 'stop' : 'destroy', id: m.id });
    excess--;
  }
  return out;
}
