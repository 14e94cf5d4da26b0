import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Heap } from '../../src/util/heap.ts';

describe('Heap', () => {
  it('pops what it holds in order, whatever the pushes and pops interleaved', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.integer({ min: -50, max: 50 }), fc.constant(null)), { maxLength: 200 }), (ops) => {
        const h = new Heap<number>((a, b) => a < b);
        const model: number[] = [];
        for (const op of ops) {
          if (op === null) {
            model.sort((a, b) => a - b);
            expect(h.pop()).toBe(model.shift());
          } else {
            h.push(op);
            model.push(op);
          }
          expect(h.size).toBe(model.length);
          expect(h.peek()).toBe(model.length === 0 ? undefined : Math.min(...model));
        }
      }),
    );
  });
});
