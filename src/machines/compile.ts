import { transition, type AnyStateMachine } from 'xstate';

/**
 * A flat XState machine compiled into a lookup table, so that the runtime
 * follows the definition exactly at table speed: hundreds of thousands of
 * steps cannot each be a live actor (see docs/ARCHITECTURE.md), but every
 * one of their transitions is still decided by the machine definition.
 * Tests check on random event sequences that the table and XState's own
 * `transition()` agree.
 */
export interface CompiledMachine<S extends string, E extends string> {
  readonly initial: S;
  readonly states: readonly S[];
  readonly events: readonly E[];
  readonly finals: ReadonlySet<S>;
  /** The next state, or undefined when the event is not accepted in `state`. */
  next(state: S, event: E): S | undefined;
  /** Events accepted in `state`. */
  accepts(state: S): readonly E[];
}

export function compileMachine<S extends string, E extends string>(
  machine: AnyStateMachine,
  states: readonly S[],
  events: readonly E[],
): CompiledMachine<S, E> {
  const table = new Map<S, Map<E, S>>();
  const finals = new Set<S>();
  for (const s of states) {
    const row = new Map<E, S>();
    const snapshot = machine.resolveState({ value: s, context: {} });
    if (snapshot.status === 'done') finals.add(s);
    for (const e of events) {
      if (!snapshot.can({ type: e })) continue;
      const [after] = transition(machine, snapshot, { type: e });
      row.set(e, after.value as S);
    }
    table.set(s, row);
  }
  const accepted = new Map<S, readonly E[]>([...table].map(([s, row]) => [s, Object.freeze([...row.keys()])]));
  return Object.freeze({
    initial: machine.config.initial as S,
    states,
    events,
    finals,
    next: (state: S, event: E) => table.get(state)?.get(event),
    accepts: (state: S) => accepted.get(state) ?? [],
  });
}
