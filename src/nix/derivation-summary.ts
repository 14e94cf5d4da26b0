import {
  derivationType, isBuiltin, isDeterministic, outputKind, preferLocalBuild, requiredSystemFeatures, type Derivation,
} from './derivation.ts';

/** What a scheduler needs from a .drv, in a compact form kept per step. */
export interface DerivationSummary {
  readonly drvPath: string;
  /** The platform; `builtin` for builtin:* builders, which any machine runs. */
  readonly system: string;
  readonly requiredFeatures: readonly string[];
  readonly preferLocalBuild: boolean;
  /** null paths: floating content-addressed (or deferred) outputs, known only after building. */
  readonly outputs: readonly { readonly name: string; readonly path: string | null }[];
  readonly inputDrvs: ReadonlyMap<string, readonly string[]>;
  /** Content-addressed (floating or deferred): resolved after its inputs are built. */
  readonly isCA: boolean;
  /** `isDetermistic = "1"`: built twice and required to be the same (src/actors/determinism.ts). */
  readonly isDeterministic?: boolean;
}

export function summarizeDerivation(drvPath: string, drv: Derivation): DerivationSummary {
  const kind = derivationType(drv);
  return {
    drvPath,
    system: isBuiltin(drv) ? 'builtin' : drv.system,
    requiredFeatures: requiredSystemFeatures(drv),
    preferLocalBuild: preferLocalBuild(drv),
    outputs: [...drv.outputs].map(([name, o]) => ({
      name,
      path: outputKind(o) === 'inputAddressed' || outputKind(o) === 'fixed' ? o.path : null,
    })),
    inputDrvs: drv.inputDrvs,
    isCA: kind === 'floating' || kind === 'deferred',
    isDeterministic: isDeterministic(drv),
  };
}
