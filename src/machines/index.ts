import { BUILDER_EVENTS, BUILDER_STATES, builderMachine, type BuilderEventType, type BuilderState } from './builder-machine.ts';
import { compileMachine } from './compile.ts';
import { STEP_EVENTS, STEP_STATES, stepMachine, type StepEventType, type StepState } from './step-machine.ts';

export * from './agent-connection-machine.ts';
export * from './builder-machine.ts';
export * from './step-machine.ts';

export const stepLifecycle = compileMachine<StepState, StepEventType>(stepMachine, STEP_STATES, STEP_EVENTS);
export const builderLifecycle = compileMachine<BuilderState, BuilderEventType>(builderMachine, BUILDER_STATES, BUILDER_EVENTS);
export * from './daemon-machine.ts';
export * from './runner-lock-machine.ts';
export * from './provisioned-machine.ts';
