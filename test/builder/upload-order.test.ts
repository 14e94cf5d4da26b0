import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { uploadOrder } from '../../src/builder/outputs.ts';

const path = (i: number): string => `/nix/store/${String(i).padStart(32, '0').replace(/[eotu]/g, 'a')}-o${i}`;

describe('the order a builder uploads outputs in', () => {
  it('every output comes after the outputs it refers to, whatever the order of their names', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }).chain((n) =>
          // References only to lower-numbered outputs: a DAG, like outputs' references (no cycles).
          fc.tuple(fc.constant(n), fc.array(fc.array(fc.nat(), { maxLength: 4 }), { minLength: n, maxLength: n }), fc.shuffledSubarray([...Array(n).keys()], { minLength: n, maxLength: n })),
        ),
        ([n, refs, shuffled]) => {
          const outputs = shuffled.map((i) => ({ name: `o${i}`, path: path(i) }));
          const infos = new Map([...Array(n).keys()].map((i) => [path(i), { references: i === 0 ? [] : refs[i]!.map((r) => path(r % i)) }]));
          const order = uploadOrder(outputs, infos).map((o) => o.path);
          expect(new Set(order)).toEqual(new Set(outputs.map((o) => o.path)));
          expect(order.length).toBe(n);
          for (const [k, p] of order.entries()) for (const r of infos.get(p)!.references) expect(order.indexOf(r)).toBeLessThan(k);
        },
      ),
    );
  });
});
