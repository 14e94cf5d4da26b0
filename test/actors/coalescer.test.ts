import { describe, expect, it } from 'vitest';
import { Coalescer } from '../../src/actors/coalescer.ts';

describe('Coalescer', () => {
  it('runs at most maxInFlight calls; keys arriving meanwhile go together in the next call', async () => {
    const calls: number[][] = [];
    let running = 0;
    let peak = 0;
    const release: (() => void)[] = [];
    const c = new Coalescer<number, number>(
      async (keys) => {
        calls.push(keys);
        peak = Math.max(peak, ++running);
        await new Promise<void>((r) => release.push(r));
        running--;
        return keys.map((k) => k * 10);
      },
      { maxBatch: 100, maxInFlight: 1, lingerMs: 0 },
    );
    const first = c.load(1);
    const rest = [2, 3, 4].map((k) => c.load(k));
    expect(calls).toEqual([[1]]);
    release.shift()!();
    expect(await first).toBe(10);
    await new Promise((r) => setImmediate(r));
    expect(calls).toEqual([[1], [2, 3, 4]]);
    release.shift()!();
    expect(await Promise.all(rest)).toEqual([20, 30, 40]);
    expect(peak).toBe(1);
  });

  it('cuts batches at maxBatch and hands a failed call to each of its keys', async () => {
    const calls: string[][] = [];
    const c = new Coalescer<string, string>(
      async (keys) => {
        calls.push(keys);
        if (keys.includes('bad')) throw new Error('no');
        return keys.map((k) => k.toUpperCase());
      },
      { maxBatch: 2, maxInFlight: 4, lingerMs: 5 },
    );
    const r = await Promise.allSettled(['a', 'b', 'bad', 'c'].map((k) => c.load(k)));
    expect(calls).toEqual([['a', 'b'], ['bad', 'c']]);
    expect(r.map((x) => (x.status === 'fulfilled' ? x.value : (x.reason as Error).message))).toEqual(['A', 'B', 'no', 'no']);
  });
});
