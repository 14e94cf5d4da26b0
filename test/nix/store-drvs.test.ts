import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseDerivation, serializeDerivation } from '../../src/nix/derivation.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';

describe('every .drv in the local store', () => {
  it('parses and re-serializes to identical bytes', async () => {
    // Make sure there is a varied set even on a fresh store.
    await instantiate(`let ${MK_DRV} in {
      a = mk { name = "store-drvs-a"; script = "echo a > $out"; };
      b = mk { name = "store-drvs-b"; script = "echo b > $out; echo \\"q\\\\t\\" > $dev"; extra = { outputs = [ "out" "dev" ]; }; };
    }`, ['a', 'b']);
    const drvs = readdirSync('/nix/store').filter((f) => f.endsWith('.drv'));
    expect(drvs.length).toBeGreaterThanOrEqual(2);
    const mismatched: string[] = [];
    for (const f of drvs) {
      const bytes = readFileSync(`/nix/store/${f}`);
      if (!Buffer.from(serializeDerivation(parseDerivation(bytes))).equals(bytes)) mismatched.push(f);
    }
    expect(mismatched).toEqual([]);
  });
});
