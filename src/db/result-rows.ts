// What a step's result writes besides its status: outputs, build products,
// nix-support data. Here so that the scheduler (src/actors/builder-port.ts),
// the publisher and the database code (build-results.ts, scheduler-db.ts)
// all import them downward.

export interface BuiltOutput {
  readonly name: string;
  readonly path: string;
  readonly narSize: number;
  readonly closureSize: number;
}

export interface BuildProductRow {
  readonly type: string;
  readonly subtype: string;
  readonly fileSize: number | null;
  readonly sha256hash: string | null;
  readonly path: string;
  readonly name: string;
  readonly defaultPath: string | null;
}

export interface NixSupportInfo {
  readonly products: readonly BuildProductRow[];
  readonly releaseName: string | null;
  readonly metrics: readonly { readonly name: string; readonly value: number; readonly unit: string | null }[];
  /** `nix-support/failed` exists: the build counts as failed with output (status 6). */
  readonly failed: boolean;
}

/**
 * A build's outputs read where they are valid, when no earlier build of them
 * has rows to copy: what a build of them reports (Hydra's BuildOutput, read
 * by its runners from the outputs themselves).
 */
export interface ValidOutputs {
  readonly outputs: readonly BuiltOutput[];
  readonly nixSupport: NixSupportInfo;
  /** The NAR sizes of the outputs' joint closure, as for a built step. */
  readonly closureSize?: number;
}
