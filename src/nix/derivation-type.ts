// The parsed .drv, on its own so that the ATerm parser (derivation-aterm.ts)
// and the helpers that interpret it (derivation.ts) both import it downward.

/**
 * One output as the .drv stores it. The raw triple is kept so that a parse
 * and serialize round trip is byte-identical; the helpers below interpret it.
 *   input-addressed: path set,  hashAlgo '',            hash ''
 *   fixed (FOD):     path set,  hashAlgo '[r:]sha256',  hash base16
 *   floating CA:     path '',   hashAlgo 'r:sha256',    hash ''
 *   deferred:        path '',   hashAlgo '',            hash ''  (depends on a floating CA output)
 *   impure:          path '',   hashAlgo '[r:]algo',    hash 'impure'
 */
export interface DerivationOutput {
  readonly path: string;
  readonly hashAlgo: string;
  readonly hash: string;
}

export interface Derivation {
  outputs: Map<string, DerivationOutput>;
  /** .drv path → names of the outputs used. */
  inputDrvs: Map<string, string[]>;
  inputSrcs: string[];
  /** `platform` in Nix's sources. */
  system: string;
  builder: string;
  args: string[];
  env: Map<string, string>;
}
