import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { accepts } from '../../src/util/accepts.ts';

describe('accepts', () => {
  it('is true exactly when the check returns, whatever it returns or throws', () => {
    fc.assert(
      fc.property(fc.integer(), fc.constantFrom<unknown>(undefined, null, false, 0, new Error('x'), 'text'), (n, thrown) => {
        const check = (x: number) => {
          if (x % 2 !== 0) throw thrown;
          return false; // a falsy result is still acceptance
        };
        expect(accepts(check, n)).toBe(n % 2 === 0);
      }),
    );
  });
});
