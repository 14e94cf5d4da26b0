import type { Derivation } from '../nix/derivation.ts';
import type { ResolvedDerivation } from './gen/runner.ts';

/**
 * Whether a build order can carry the derivation resolved: its environment
 * travels as a protobuf map, decoded into a plain object, where a variable
 * named `__proto__` would be lost. Such a derivation is realised instead.
 */
export function resolvable(drv: Derivation): boolean {
  return !drv.env.has('__proto__');
}

/** A basic derivation (no input derivations: see basicDerivation) as a build order carries it. */
export function toResolved(drv: Derivation): ResolvedDerivation {
  return {
    outputs: [...drv.outputs].map(([name, o]) => ({ name, path: o.path, hashAlgo: o.hashAlgo, hash: o.hash })),
    inputSrcs: [...drv.inputSrcs],
    system: drv.system,
    builder: drv.builder,
    args: [...drv.args],
    env: Object.fromEntries(drv.env),
  };
}

export function fromResolved(r: ResolvedDerivation): Derivation {
  return {
    outputs: new Map(r.outputs.map((o) => [o.name, { path: o.path, hashAlgo: o.hashAlgo, hash: o.hash }])),
    inputDrvs: new Map(),
    inputSrcs: [...r.inputSrcs],
    system: r.system,
    builder: r.builder,
    args: [...r.args],
    env: new Map(Object.entries(r.env)),
  };
}
