import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { getNextSnapshot } from 'xstate';
import { afterAll, describe, expect, it } from 'vitest';
import { parseProvisionerConfig } from '../../src/config/provisioner-config.ts';
import { compileMachine } from '../../src/machines/compile.ts';
import { PROVISIONED_EVENTS, PROVISIONED_STATES, provisionedMachine } from '../../src/machines/provisioned-machine.ts';
import { Provisioner } from '../../src/provision/provisioner.ts';
import type { RunnerStatus } from '../../src/provision/runner-status.ts';
import { wantedMachines } from '../../src/provision/wanted.ts';
import { quietLog } from '../helpers/runtime.ts';
import { SimBackend } from './sim-backend.ts';

const root = mkdtempSync(join(tmpdir(), 'hydrant-provision-prop-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('the wanted-machines formula', () => {
  it('is ceil((runnable − ignored) / per machine), clamped to [min, max]', () => {
    fc.assert(
      fc.property(fc.nat(50), fc.nat(50), fc.nat(20), fc.integer({ min: 1, max: 20 }), fc.nat(1000), (a, b, ignored, per, runnable) => {
        const [min, max] = a <= b ? [a, b] : [b, a];
        const w = wantedMachines({ minMachines: min, maxMachines: max, ignoredRunnables: ignored, runnablesPerMachine: per }, runnable);
        expect(w).toBeGreaterThanOrEqual(min);
        expect(w).toBeLessThanOrEqual(max);
        const raw = Math.ceil(Math.max(0, runnable - ignored) / per);
        if (raw >= min && raw <= max) expect(w).toBe(raw);
        // Enough machines for the runnables beyond the ignored ones, and not one more than needed.
        if (w < max) expect(w * per).toBeGreaterThanOrEqual(runnable - ignored);
        if (w > min) expect((w - 1) * per).toBeLessThan(runnable - ignored);
      }),
    );
  });

  it('matches hydra-provisioner on its README example: 10 runnables, 5 per machine, 2 machines', () => {
    expect(wantedMachines({ minMachines: 0, maxMachines: 5, ignoredRunnables: 0, runnablesPerMachine: 5 }, 10)).toBe(2);
    expect(wantedMachines({ minMachines: 0, maxMachines: 1, ignoredRunnables: 0, runnablesPerMachine: 10 }, 0)).toBe(0);
  });
});

describe('the provisioned-machine lifecycle', () => {
  const table = compileMachine(provisionedMachine, PROVISIONED_STATES, PROVISIONED_EVENTS);
  it('reaches only its declared states, and gone ends it', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...PROVISIONED_EVENTS), { maxLength: 60 }), (events) => {
        let snap = provisionedMachine.resolveState({ value: 'requested', context: {} });
        for (const e of events) {
          const accepted = snap.can({ type: e });
          const next = getNextSnapshot(provisionedMachine, snap, { type: e });
          if (!accepted) expect(next.value).toBe(snap.value);
          else expect(next.value).toBe(table.next(snap.value as never, e));
          expect(PROVISIONED_STATES).toContain(next.value);
          snap = next;
        }
      }),
    );
    expect(table.finals).toEqual(new Set(['gone']));
    expect(table.accepts('gone')).toEqual([]);
    // A machine is never made twice: only requested may CREATE, and nothing goes back to requested.
    for (const s of PROVISIONED_STATES) {
      if (s !== 'requested') expect(table.accepts(s)).not.toContain('CREATE');
      for (const e of PROVISIONED_EVENTS) expect(table.next(s, e)).not.toBe('requested');
    }
  });
});

describe('the provisioner over random queue curves, join delays and crash points', () => {
  const curve = fc.array(fc.nat(60), { minLength: 1, maxLength: 12 });
  it('never more than maxMachines, at least minMachines once converged, and nothing leaked or doubled', async () => {
    let run = 0;
    let crashes = 0;
    await fc.assert(
      fc.asyncProperty(
        curve,
        fc.record({ min: fc.nat(2), extra: fc.nat(3), per: fc.integer({ min: 1, max: 15 }), maxCreates: fc.integer({ min: 1, max: 4 }), grace: fc.nat(3), stopOnIdle: fc.boolean() }),
        fc.nat(6), // passes a machine takes to join
        fc.option(fc.nat(30), { nil: undefined }), // the backend call during which the provisioner is killed
        fc.boolean(), // killed before or after the backend did the work
        fc.array(fc.boolean(), { maxLength: 12 }), // passes whose creates fail
        async (queue, t, joinPasses, crashAt, crashBefore, failing) => {
          const dir = join(root, `run-${run++}`);
          const config = parseProvisionerConfig(
            {
              stateDir: dir,
              statusUrl: 'http://127.0.0.1:1',
              interval: 1,
              maxCreatesPerPass: t.maxCreates,
              retryMin: 1,
              retryMax: 4,
              joinTimeout: 3600,
              backend: { type: 'command', create: ['true'], destroy: ['true'], list: ['true'], start: ['true'], stop: ['true'] },
              systemTypes: { 'x86_64-linux': { minMachines: t.min, maxMachines: t.min + t.extra, runnablesPerMachine: t.per, gracePeriod: t.grace, stopOnIdle: t.stopOnIdle } },
            },
            'property',
          );
          const max = t.min + t.extra;
          let now = 1_000_000;
          const backend = new SimBackend(() => now);
          backend.crashAfter = crashAt ?? Infinity;
          backend.crashBefore = crashBefore;
          let runnable = 0;
          const status = async (): Promise<RunnerStatus> => ({
            status: 'up',
            machineTypes: { 'x86_64-linux': { runnable } },
            // A running machine joins joinPasses seconds after it was made; each joined one takes
            // runnablesPerMachine steps, so the first ceil(runnable / per) of them are busy.
            machines: Object.fromEntries(
              [...backend.machines]
                .filter(([, m]) => m.state === 'running' && now - m.createdAt >= joinPasses * 1000)
                .map(([id], i) => [id, { currentJobs: i < Math.ceil(runnable / t.per) ? 1 : 0 }]),
            ),
          });
          const make = (): Provisioner => new Provisioner({ config, backend, readStatus: status, log: quietLog, now: () => now });
          let p = make();
          const passOnce = async (): Promise<void> => {
            const done = p.pass();
            // A killed provisioner's pass never ends: a new one starts from the saved snapshots.
            const crashed = await Promise.race([done.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(backend.calls > backend.crashAfter), 5))]);
            if (crashed || backend.calls > backend.crashAfter) {
              backend.crashAfter = Infinity;
              crashes++;
              p = make();
            }
            now += 1000;
            expect([...backend.machines.values()].length).toBeLessThanOrEqual(max);
          };
          for (let i = 0; i < queue.length; i++) {
            runnable = queue[i]!;
            backend.failCreates = failing[i] ?? false;
            await passOnce();
            await passOnce();
          }
          // Steady queue, no failures: converges to exactly the wanted number.
          backend.failCreates = false;
          const last = queue[queue.length - 1]!;
          runnable = last;
          for (let i = 0; i < 20 + 2 * max; i++) await passOnce();
          const wanted = wantedMachines({ minMachines: t.min, maxMachines: max, ignoredRunnables: 0, runnablesPerMachine: t.per }, last);
          const up = [...backend.machines.values()].filter((m) => m.state === 'running').length;
          expect(up).toBeGreaterThanOrEqual(t.min);
          expect(up).toBe(wanted);
          // The queue empties: after the grace period only minMachines stay up; every other machine is stopped or destroyed.
          runnable = 0;
          for (let i = 0; i < 20 + t.grace + max; i++) await passOnce();
          expect([...backend.machines.values()].filter((m) => m.state === 'running').length).toBe(t.min);
          if (!t.stopOnIdle) expect(backend.machines.size).toBe(t.min);
          // Nothing leaked: every machine the backend has is one the provisioner tracks.
          const tracked = p.states();
          for (const id of backend.machines.keys()) expect(tracked.has(id), id).toBe(true);
          expect(backend.peak.get('x86_64-linux') ?? 0).toBeLessThanOrEqual(max);
          p.close();
        },
      ),
      { numRuns: 60 },
    );
    expect(crashes).toBeGreaterThan(5); // the kills did happen, at many points
  }, 120_000);
});
