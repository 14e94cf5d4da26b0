import { describe, expect, it } from 'vitest';
import { buildSizes } from '../../src/db/output-sizes.ts';

describe("a build's size and closure size from its outputs", () => {
  it('three outputs without references: the closure is the three NARs, never less than size', () => {
    const three = [288, 288, 288].map((n) => ({ narSize: n, closureSize: n }));
    expect(buildSizes(three)).toEqual({ size: 864, closureSize: 864 });
  });

  it('outputs with dependencies of their own: size counts the outputs, the closure adds what they reach', () => {
    const r = buildSizes([{ narSize: 100, closureSize: 1100 }, { narSize: 50, closureSize: 50 }]);
    expect(r).toEqual({ size: 150, closureSize: 1150 });
    expect(r.closureSize).toBeGreaterThanOrEqual(r.size);
  });

  it('a closure reported below its own NAR (a builder that could not size it) still counts the NAR', () => {
    expect(buildSizes([{ narSize: 10, closureSize: 0 }])).toEqual({ size: 10, closureSize: 10 });
  });

  it('the joint closure, when the runner could read it, is the closure size (never below size)', () => {
    const outs = [{ narSize: 100, closureSize: 400 }, { narSize: 50, closureSize: 350 }];
    expect(buildSizes(outs, 420)).toEqual({ size: 150, closureSize: 420 });
    expect(buildSizes(outs, 10)).toEqual({ size: 150, closureSize: 150 });
  });
});
