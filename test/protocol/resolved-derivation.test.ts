import { describe, expect, it } from 'vitest';
import type { Derivation } from '../../src/nix/derivation.ts';
import { BuildOrder } from '../../src/protocol/gen/runner.ts';
import { fromResolved, resolvable, toResolved } from '../../src/protocol/resolved-derivation.ts';

function drv(env: [string, string][]): Derivation {
  return {
    outputs: new Map([
      ['dev', { path: '/nix/store/00000000000000000000000000000001-x-dev', hashAlgo: '', hash: '' }],
      ['out', { path: '/nix/store/00000000000000000000000000000002-x', hashAlgo: '', hash: '' }],
    ]),
    inputDrvs: new Map(),
    inputSrcs: ['/nix/store/00000000000000000000000000000003-src'],
    system: 'x86_64-linux',
    builder: '/bin/sh',
    args: ['-c', 'echo hi > $out'],
    env: new Map(env),
  };
}

/** Through the wire: encoded and decoded as part of a BuildOrder. */
function overTheWire(d: Derivation): Derivation {
  const order = BuildOrder.fromPartial({ jobId: 'j', drvPath: '/nix/store/00000000000000000000000000000004-x.drv', resolved: toResolved(d) });
  return fromResolved(BuildOrder.decode(BuildOrder.encode(order).finish()).resolved!);
}

describe('resolved derivations in build orders', () => {
  it('arrive as they were sent', () => {
    const d = drv([['name', 'x'], ['out', '/nix/store/00000000000000000000000000000002-x'], ['empty', ''], ['multi', 'a\nb "c"']]);
    expect(resolvable(d)).toBe(true);
    expect(overTheWire(d)).toEqual(d);
  });

  it('are not used for an environment a protobuf map cannot carry', () => {
    const d = drv([['name', 'x'], ['__proto__', 'value']]);
    expect(overTheWire(d).env.has('__proto__')).toBe(false);
    expect(resolvable(d)).toBe(false);
  });
});
