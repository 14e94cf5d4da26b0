import fc from 'fast-check';
import { expect } from 'vitest';

/**
 * Over 300 values of `arb`: each parser gives back the value from its
 * serialized text, and serializing what the first one gave is that same
 * text (the text is canonical).
 */
export function assertRoundTrips<T>(arb: fc.Arbitrary<T>, serialize: (value: T) => string, parse: (text: string) => T, ...moreParsers: ((text: string) => T)[]): void {
  fc.assert(
    fc.property(arb, (value) => {
      const text = serialize(value);
      for (const p of [parse, ...moreParsers]) expect(p(text)).toEqual(value);
      expect(serialize(parse(text))).toBe(text);
    }),
    { numRuns: 300 },
  );
}
