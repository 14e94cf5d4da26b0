import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, initialTransition, SimulatedClock, transition, type SnapshotFrom } from 'xstate';
import {
  AGENT_CONNECTION_EVENTS,
  AGENT_CONNECTION_STATES,
  agentConnectionMachine,
  agentConnectionState,
  reconnectDelay,
  type AgentConnectionEvent,
} from '../../src/machines/index.ts';

const input = { reconnectMinMs: 100, reconnectMaxMs: 1000, random: () => 0.5 };

/** The definition's own answer: the state `transition()` reaches from `from` on `event`. */
function expected(from: SnapshotFrom<typeof agentConnectionMachine>, event: AgentConnectionEvent): string {
  const [after] = transition(agentConnectionMachine, from, event);
  return agentConnectionState(after.value);
}

function harness() {
  const clock = new SimulatedClock();
  const sessions = { started: 0, stopped: 0 };
  let pings = 0;
  const fatal: unknown[] = [];
  const machine = agentConnectionMachine.provide({
    actors: {
      session: fromCallback<AgentConnectionEvent>(() => {
        sessions.started++;
        return () => {
          sessions.stopped++;
        };
      }),
    },
    actions: {
      ping: () => {
        pings++;
      },
      reportFatal: (_, params) => {
        fatal.push(params.error);
      },
    },
  });
  const actor = createActor(machine, { input, clock }).start();
  const state = (): string => agentConnectionState(actor.getSnapshot().value);
  /** Sends `event` and checks the actor went where the pure definition says. */
  const send = (event: AgentConnectionEvent): string => {
    const want = expected(actor.getSnapshot(), event);
    actor.send(event);
    expect(state()).toBe(want);
    return want;
  };
  return { clock, actor, sessions, state, send, pings: () => pings, fatal };
}

describe('agent connection machine', () => {
  it('lists its states and events', () => {
    const [s] = initialTransition(agentConnectionMachine, input);
    expect(agentConnectionState(s.value)).toBe('connecting');
    const leaves = [
      ...Object.keys(agentConnectionMachine.root.states.session!.states),
      ...Object.keys(agentConnectionMachine.root.states).filter((k) => k !== 'session'),
    ];
    expect(leaves.sort()).toEqual([...AGENT_CONNECTION_STATES].sort());
    expect(new Set(agentConnectionMachine.events.filter((e) => !e.startsWith('xstate.')))).toEqual(new Set(AGENT_CONNECTION_EVENTS));
  });

  it('connects, joins, pings, loses the stream, backs off, reconnects, and stops', () => {
    const h = harness();
    expect(h.state()).toBe('connecting');
    expect(h.sessions.started).toBe(1);
    expect(h.send({ type: 'OPENED' })).toBe('joining');
    // Nothing pings before the join.
    h.clock.increment(60_000);
    expect(h.pings()).toBe(0);
    expect(h.send({ type: 'JOINED', pingIntervalMs: 3000 })).toBe('connected');
    expect(h.actor.getSnapshot().context.joins).toBe(1);

    // The ping period elapses: one ping each, the state stays connected.
    h.clock.increment(2999);
    expect(h.pings()).toBe(0);
    h.clock.increment(1);
    expect(h.pings()).toBe(1);
    expect(h.state()).toBe('connected');
    h.clock.increment(3000);
    expect(h.pings()).toBe(2);
    // The runner changes the period: a new one starts now.
    h.clock.increment(1000);
    expect(h.send({ type: 'CONFIG', pingIntervalMs: 500 })).toBe('connected');
    h.clock.increment(499);
    expect(h.pings()).toBe(2);
    h.clock.increment(1);
    expect(h.pings()).toBe(3);
    // A zero period changes nothing.
    h.send({ type: 'CONFIG', pingIntervalMs: 0 });
    expect(h.actor.getSnapshot().context.pingIntervalMs).toBe(500);

    // The stream is lost: the session is torn down, the backoff runs.
    expect(h.send({ type: 'LOST' })).toBe('backoff');
    expect(h.sessions.stopped).toBe(1);
    const wait = h.actor.getSnapshot().context.backoffMs;
    expect(wait).toBe(reconnectDelay(0, 100, 1000, 0.5));
    expect(wait).toBe(75);
    h.clock.increment(600_000 - 1); // no pings while away
    expect(h.pings()).toBe(3);
    // (the SimulatedClock fired the backoff long ago: check the dial happened once)
    expect(h.state()).toBe('connecting');
    expect(h.sessions.started).toBe(2);

    // Failed dials back off longer each time, up to the cap.
    const waits: number[] = [];
    for (let i = 0; i < 6; i++) {
      expect(h.send({ type: 'LOST' })).toBe('backoff');
      waits.push(h.actor.getSnapshot().context.backoffMs);
      h.clock.increment(waits.at(-1)! - 1);
      expect(h.state()).toBe('backoff');
      h.clock.increment(1);
      expect(h.state()).toBe('connecting');
    }
    expect(waits).toEqual([150, 300, 600, 750, 750, 750]);

    // A join resets the exponent.
    h.send({ type: 'OPENED' });
    h.send({ type: 'JOINED', pingIntervalMs: 0 });
    expect(h.actor.getSnapshot().context.pingIntervalMs).toBe(10_000);
    expect(h.actor.getSnapshot().context.joins).toBe(2);
    h.send({ type: 'LOST' });
    expect(h.actor.getSnapshot().context.backoffMs).toBe(75);

    // STOP during the backoff ends it: no more dials.
    expect(h.send({ type: 'STOP' })).toBe('stopped');
    expect(h.actor.getSnapshot().status).toBe('done');
    const started = h.sessions.started;
    h.clock.increment(600_000);
    expect(h.sessions.started).toBe(started);
    expect(h.fatal).toEqual([]);
  });

  it('STOP while connected tears the session down', () => {
    const h = harness();
    h.send({ type: 'OPENED' });
    h.send({ type: 'JOINED', pingIntervalMs: 1000 });
    expect(h.send({ type: 'STOP' })).toBe('stopped');
    expect(h.sessions.stopped).toBe(1);
    h.clock.increment(10_000);
    expect(h.pings()).toBe(0);
  });

  it('a refusal is fatal from any session state, reported once, and nothing dials again', () => {
    for (const before of [[], [{ type: 'OPENED' }], [{ type: 'OPENED' }, { type: 'JOINED', pingIntervalMs: 1000 }]] as AgentConnectionEvent[][]) {
      const h = harness();
      for (const e of before) h.send(e);
      const error = new Error('refused');
      expect(h.send({ type: 'REFUSED', error })).toBe('fatal');
      expect(h.actor.getSnapshot().status).toBe('done');
      expect(h.fatal).toEqual([error]);
      expect(h.sessions.stopped).toBe(1);
      h.clock.increment(600_000);
      expect(h.sessions.started).toBe(1);
      expect(h.pings()).toBe(0);
      // Final: later events change nothing.
      h.actor.send({ type: 'STOP' });
      expect(h.state()).toBe('fatal');
    }
  });

  it('events a state does not accept leave it where it is (pure transition)', () => {
    const [s0] = initialTransition(agentConnectionMachine, input);
    const accepts: Record<string, string[]> = {};
    const walk: [string, typeof s0][] = [['connecting', s0]];
    const [s1] = transition(agentConnectionMachine, s0, { type: 'OPENED' });
    walk.push(['joining', s1]);
    const [s2] = transition(agentConnectionMachine, s1, { type: 'JOINED', pingIntervalMs: 5 });
    walk.push(['connected', s2]);
    const [s3] = transition(agentConnectionMachine, s2, { type: 'LOST' });
    walk.push(['backoff', s3]);
    const [s4] = transition(agentConnectionMachine, s3, { type: 'STOP' });
    walk.push(['stopped', s4]);
    const [s5] = transition(agentConnectionMachine, s0, { type: 'REFUSED', error: null });
    walk.push(['fatal', s5]);
    const sample: Record<string, AgentConnectionEvent> = {
      OPENED: { type: 'OPENED' },
      JOINED: { type: 'JOINED', pingIntervalMs: 1 },
      CONFIG: { type: 'CONFIG', pingIntervalMs: 1 },
      LOST: { type: 'LOST' },
      REFUSED: { type: 'REFUSED', error: null },
      STOP: { type: 'STOP' },
    };
    for (const [name, snap] of walk) {
      expect(agentConnectionState(snap.value)).toBe(name);
      accepts[name] = AGENT_CONNECTION_EVENTS.filter((e) => snap.can(sample[e]!));
    }
    expect(accepts).toEqual({
      connecting: ['OPENED', 'LOST', 'REFUSED', 'STOP'],
      joining: ['JOINED', 'LOST', 'REFUSED', 'STOP'],
      connected: ['CONFIG', 'LOST', 'REFUSED', 'STOP'],
      backoff: ['STOP'],
      stopped: [],
      fatal: [],
    });
  });
});
