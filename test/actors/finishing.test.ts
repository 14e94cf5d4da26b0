import { describe, expect, it } from 'vitest';
import type { StepFinisher, StepOutcome } from '../../src/actors/builder-port.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { SimulatedBuilder } from '../sim/simulated-builder.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, startRuntime, waitFor } from '../helpers/runtime.ts';

describe('finishing a step (publishing its outputs)', () => {
  const db = useTestDatabase();

  it("frees the machine's slot as soon as the builder is done, and ends the build only once the outputs are published", async () => {
    const store = new MemoryStore();
    const drv = (n: string) => store.addTrivial(n);
    const a = drv('a');
    const b = drv('b');
    // Publishing waits until the test lets it go.
    const waiting: (() => void)[] = [];
    const finisher: StepFinisher = {
      finish: (_job, outcome) => new Promise<StepOutcome>((resolve) => waiting.push(() => resolve(outcome))),
    };
    const jobset = await createJobset(db.pool);
    const ids = [await queueBuild(db.pool, jobset, a, 'a'), await queueBuild(db.pool, jobset, b, 'b')];
    const { runtime } = await startRuntime(db.pool, store, {}, finisher);
    const started: string[] = [];
    const m = machineRecord('m1', { maxJobs: 1 });
    runtime.scheduler.addMachine(m, new SimulatedBuilder({ store, onStart: (j) => started.push(j.drvPath) }));

    // One slot: a builds; once built, a waits for its upload while b takes the slot.
    await waitFor(() => started.length === 2, 5000, 'b to start while a publishes');
    await waitFor(() => waiting.length === 2, 5000, 'both to wait for their upload');
    const finished = async () => (await db.pool.query('select count(*)::int n from builds where finished = 1')).rows[0].n;
    expect(await finished()).toBe(0);
    expect(m.jobs.size).toBe(0);
    expect(runtime.scheduler.activeJobs).toBe(2);
    for (const go of waiting) go();
    await waitFor(async () => (await finished()) === 2, 5000, 'both builds');
    await runtime.scheduler.settle();
    expect((await db.pool.query('select id, buildstatus from builds order by id')).rows).toEqual(ids.map((id) => ({ id, buildstatus: 0 })));
    await runtime.stop(0);
  });
});
