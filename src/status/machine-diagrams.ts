import { compileMachine, type CompiledMachine } from '../machines/compile.ts';
import { builderLifecycle, PROVISIONED_EVENTS, PROVISIONED_STATES, provisionedMachine, stepLifecycle, type ProvisionedEventType, type ProvisionedState } from '../machines/index.ts';

/** A machine definition as a graph the visualizer draws: states and labelled transitions. */
export function machineDiagram<S extends string, E extends string>(id: string, m: CompiledMachine<S, E>) {
  return {
    id,
    initial: m.initial,
    states: m.states.map((s) => ({ id: s, final: m.finals.has(s) })),
    transitions: m.states.flatMap((from) => m.accepts(from).map((event) => ({ from, event, to: m.next(from, event)! }))),
  };
}

/** The step and builder lifecycles, read from the XState definitions the runtime compiles. */
export function machineDiagrams() {
  return { step: machineDiagram('step', stepLifecycle), builder: machineDiagram('builder', builderLifecycle) };
}

/** The lifecycle of a machine `hydrant provision` made (its status page draws it). */
export function provisionedDiagram() {
  return machineDiagram('provisioned', compileMachine<ProvisionedState, ProvisionedEventType>(provisionedMachine, PROVISIONED_STATES, PROVISIONED_EVENTS));
}
