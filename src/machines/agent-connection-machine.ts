import { assign, fromCallback, setup } from 'xstate';

/**
 * The builder agent's connection to its runner (`hydrant builder`), in the
 * style of XState's connection manager: dial, join, ping, reconnect with
 * backoff, all one actor. Pure: the control stream is an invoked callback
 * actor (`session`) and the ping and fatal report are actions, all three
 * supplied by the runtime (src/builder/connection.ts) with `provide`; the
 * definitions here do nothing. The ping period and the backoff are XState
 * `after` delays read from the context, so the actor's clock drives them.
 *
 *   session ┌ connecting ─OPENED─► joining ─JOINED─► connected ⟲ ping (every pingIntervalMs)
 *           │                                          └CONFIG─► connected (new period)
 *           └ LOST ─► backoff ─(backoffMs)─► session.connecting
 *   session ─REFUSED─► fatal        (a refused token or certificate: no retry can help)
 *   session|backoff ─STOP─► stopped
 *
 * The session actor runs while `session` is active: leaving it (LOST,
 * REFUSED, STOP) tears the control stream down. The backoff is capped
 * exponential with jitter over the upper half: the cap is
 * min(reconnectMaxMs, reconnectMinMs · 2^attempt), the wait cap/2 + u·cap/2
 * (u from `random`), and `attempt` counts dials since the last join.
 */
export const AGENT_CONNECTION_EVENTS = ['OPENED', 'JOINED', 'CONFIG', 'LOST', 'REFUSED', 'STOP'] as const;
export type AgentConnectionEventType = (typeof AGENT_CONNECTION_EVENTS)[number];

/** The leaf states, as `stateName` reports them. */
export const AGENT_CONNECTION_STATES = ['connecting', 'joining', 'connected', 'backoff', 'stopped', 'fatal'] as const;
export type AgentConnectionState = (typeof AGENT_CONNECTION_STATES)[number];

export type AgentConnectionEvent =
  | { type: 'OPENED' }
  | { type: 'JOINED'; pingIntervalMs: number }
  | { type: 'CONFIG'; pingIntervalMs: number }
  | { type: 'LOST' }
  | { type: 'REFUSED'; error: unknown }
  | { type: 'STOP' };

export interface AgentConnectionInput {
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  /** Uniform in [0, 1) for the jitter (Math.random; tests pass a constant). */
  readonly random?: () => number;
}

export interface AgentConnectionContext {
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly random: () => number;
  /** Dials since the last join (the backoff's exponent). */
  readonly attempt: number;
  /** The current backoff's wait. */
  readonly backoffMs: number;
  readonly pingIntervalMs: number;
  /** Sessions joined. */
  readonly joins: number;
  /** What REFUSED carried. */
  readonly refusal: unknown;
}

/** The ping period before the runner names one. */
export const DEFAULT_PING_INTERVAL_MS = 10_000;

/** The wait before the next dial after `attempt` dials since the last join, `u` uniform in [0, 1). */
export function reconnectDelay(attempt: number, minMs: number, maxMs: number, u: number): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  // Full jitter over the upper half: never a thundering herd, never zero.
  return cap / 2 + u * (cap / 2);
}

export const agentConnectionMachine = setup({
  types: {} as {
    context: AgentConnectionContext;
    events: AgentConnectionEvent;
    input: AgentConnectionInput;
  },
  actors: {
    /** The control stream: dial, Join, read the runner's messages; sends OPENED, JOINED, CONFIG, LOST, REFUSED. */
    session: fromCallback<AgentConnectionEvent>(() => undefined),
  },
  actions: {
    /** Sends one ping on the control stream. */
    ping: () => {},
    /** Reports the refusal (the agent stops; `hydrant builder` exits 1). */
    reportFatal: (_, _params: { error: unknown }) => {},
  },
  delays: {
    ping: ({ context }) => context.pingIntervalMs,
    backoff: ({ context }) => context.backoffMs,
  },
}).createMachine({
  id: 'agentConnection',
  context: ({ input }) => ({
    reconnectMinMs: input.reconnectMinMs,
    reconnectMaxMs: input.reconnectMaxMs,
    random: input.random ?? Math.random,
    attempt: 0,
    backoffMs: 0,
    pingIntervalMs: DEFAULT_PING_INTERVAL_MS,
    joins: 0,
    refusal: undefined,
  }),
  initial: 'session',
  states: {
    session: {
      invoke: { src: 'session' },
      initial: 'connecting',
      on: {
        LOST: 'backoff',
        REFUSED: { target: 'fatal', actions: assign({ refusal: ({ event }) => event.error }) },
        STOP: 'stopped',
      },
      states: {
        connecting: { on: { OPENED: 'joining' } },
        joining: {
          on: {
            JOINED: {
              target: 'connected',
              actions: assign({
                attempt: 0,
                joins: ({ context }) => context.joins + 1,
                pingIntervalMs: ({ event }) => event.pingIntervalMs || DEFAULT_PING_INTERVAL_MS,
              }),
            },
          },
        },
        connected: {
          after: { ping: { target: 'connected', reenter: true, actions: 'ping' } },
          on: {
            // A new period starts now (the old timer is dropped).
            CONFIG: {
              guard: ({ event }) => event.pingIntervalMs > 0,
              target: 'connected',
              reenter: true,
              actions: assign({ pingIntervalMs: ({ event }) => event.pingIntervalMs }),
            },
          },
        },
      },
    },
    backoff: {
      entry: assign(({ context }) => ({
        backoffMs: reconnectDelay(context.attempt, context.reconnectMinMs, context.reconnectMaxMs, context.random()),
        attempt: context.attempt + 1,
      })),
      after: { backoff: 'session' },
      on: { STOP: 'stopped' },
    },
    stopped: { type: 'final' },
    fatal: {
      type: 'final',
      entry: { type: 'reportFatal', params: ({ context }) => ({ error: context.refusal }) },
    },
  },
});

/** The leaf state of a snapshot's value. */
export function agentConnectionState(value: unknown): AgentConnectionState {
  if (typeof value === 'string') return value as AgentConnectionState;
  const session = (value as { session?: string }).session;
  return (session ?? 'connecting') as AgentConnectionState;
}
