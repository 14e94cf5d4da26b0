import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { determinismOf, parseJobsetRepeats } from '../../src/actors/determinism.ts';
import type { JobsetRecord, StepRecord } from '../../src/actors/model.ts';
import { roundsColumns } from '../../src/db/rounds.ts';

const jobset = (project: string, name: string): JobsetRecord => ({ id: 0, project, name, shares: 100, seconds: 0, charges: [] });
const step = (isDeterministic: boolean, jobsets: JobsetRecord[]) => ({ isDeterministic, jobsets }) as unknown as StepRecord;

describe('determinism checks (C++ builder.cc:102, 133-138)', () => {
  it('repeats = max(1 if the derivation asks, the largest N of its jobsets); enforced only when the derivation asks', () => {
    const names = fc.constantFrom('a', 'b', 'c');
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.array(fc.tuple(names, names, fc.nat(5)), { maxLength: 6 }),
        fc.array(fc.tuple(names, names), { maxLength: 4 }),
        (asks, entries, on) => {
          const list = entries.map(([p, j, n]) => `${p}:${j}:${n}`);
          const table = parseJobsetRepeats(list);
          const d = determinismOf(step(asks, on.map(([p, j]) => jobset(p, j))), list);
          const expected = Math.max(asks ? 1 : 0, ...on.map(([p, j]) => table.get(`${p}:${j}`) ?? 0));
          expect(d.repeats).toBe(expected);
          expect(d.enforceDeterminism).toBe(asks && expected > 0);
        },
      ),
    );
  });

  it('refuses an entry that is not project:jobset:N', () => {
    expect(() => parseJobsetRepeats(['p:j'])).toThrow(/project:jobset:N/);
    expect(() => parseJobsetRepeats(['p:j:x'])).toThrow(/project:jobset:N/);
  });

  it('writes timesBuilt when positive and isNonDeterministic only past one round (hydra-queue-runner.cc:356-357)', () => {
    expect(roundsColumns({})).toEqual({ timesBuilt: 1, isNonDeterministic: null });
    expect(roundsColumns({ timesBuilt: 1, isNonDeterministic: true })).toEqual({ timesBuilt: 1, isNonDeterministic: null });
    expect(roundsColumns({ timesBuilt: 3, isNonDeterministic: false })).toEqual({ timesBuilt: 3, isNonDeterministic: false });
    expect(roundsColumns({ timesBuilt: 2, isNonDeterministic: true })).toEqual({ timesBuilt: 2, isNonDeterministic: true });
    expect(roundsColumns({ timesBuilt: 0 })).toEqual({ timesBuilt: null, isNonDeterministic: null });
  });
});
