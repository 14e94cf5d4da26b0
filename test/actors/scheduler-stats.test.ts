import { describe, expect, it } from 'vitest';
import type { StepRecord } from '../../src/actors/model.ts';
import { FAIR_SHARE_WINDOW_S, SchedulerStats } from '../../src/actors/scheduler-stats.ts';

const HOUR = 3600 * 1000;

describe('SchedulerStats', () => {
  it("divides a step's build time among its jobsets and forgets charges older than the window", () => {
    const stats = new SchedulerStats();
    const a = stats.jobset({ jobsetId: 1, project: 'p', jobset: 'a' });
    const b = stats.jobset({ jobsetId: 2, project: 'p', jobset: 'b' }, 50);
    const step = { jobsets: [a, b] } as unknown as StepRecord;
    const built = (startTime: number, stopTime: number) => ({ kind: 'failure', status: 1, errorMsg: '', startTime, stopTime, logFile: '' }) as const;

    // 60 s shared by two jobsets: 30 s each (C++ builder.cc:236-245).
    stats.stepDone(step, 'm1', 0, built(100, 160), 1 * HOUR);
    expect([a.seconds, b.seconds, b.shares]).toEqual([30, 30, 50]);
    stats.stepDone({ jobsets: [a] } as unknown as StepRecord, 'm1', 0, built(0, 40), 2 * HOUR);
    expect([a.seconds, b.seconds]).toEqual([70, 30]);
    // Past the window of the first charge: only the second one remains for a; b's went too.
    stats.stepDone(step, 'm2', 0, built(0, 2), 1 * HOUR + FAIR_SHARE_WINDOW_S * 1000 + 1);
    expect([a.seconds, b.seconds]).toEqual([41, 1]);
    expect(stats.counters).toMatchObject({ stepsFinished: 3, stepsFailed: 3, stepsSucceeded: 0 });
    expect(stats.machine('m1')).toMatchObject({ stepsDone: 2, failed: 2, totalBuildMs: 100_000 });
  });

  it("takes a jobset's seconds from the database only until it has charged the jobset itself", () => {
    const stats = new SchedulerStats();
    stats.jobsetShares({ id: 7, project: 'p', name: 'j', schedulingShares: 10, recentSeconds: 500 });
    const j = stats.jobsets.get(7)!;
    expect([j.shares, j.seconds]).toEqual([10, 500]);
    stats.stepDone({ jobsets: [j] } as unknown as StepRecord, 'm', 0, { kind: 'failure', status: 1, errorMsg: '', startTime: 0, stopTime: 20, logFile: '' }, HOUR);
    stats.jobsetShares({ id: 7, project: 'p', name: 'j', schedulingShares: 30, recentSeconds: 900 });
    expect([j.shares, j.seconds]).toEqual([30, 520]);
    expect(stats.jobset({ jobsetId: 7, project: 'p', jobset: 'j' })).toBe(j);
  });
});
