import type { NixSupportInfo, ValidOutputs } from '../db/result-rows.ts';
import { readBuildNixSupport, type NixSupport, type Rejection } from '../nix/nix-support.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { jointClosureSize, queryPathInfos } from '../nix/transfer.ts';

/** nix-support as a step's result carries it: an empty default path or unit is NULL in Hydra's rows. */
export function nixSupportInfo(ns: NixSupport): NixSupportInfo {
  return {
    failed: ns.failed,
    releaseName: ns.releaseName,
    metrics: ns.metrics.map((m) => ({ name: m.name, value: m.value, unit: m.unit || null })),
    products: ns.products.map((p) => ({ ...p, defaultPath: p.defaultPath || null })),
  };
}

/**
 * Valid outputs of `store` read as a build of them reports them: each
 * output's NAR size, the joint closure's size, and their nix-support files
 * (products hashed from the files, release name, metrics, failed). Hydra's
 * runners do the same for a build queued with its outputs valid and no
 * earlier build of them (Rust BuildOutput::new over the local store, C++
 * getBuildOutput). Throws PathNotInStoreError when an output is not valid.
 */
export async function readValidOutputs(
  store: NixStoreHandle,
  outputs: readonly { name: string; path: string }[],
  onRejected?: (r: Rejection) => void,
): Promise<ValidOutputs> {
  const paths = outputs.map((o) => o.path);
  const infos = await queryPathInfos(store, paths);
  const closureSize = await jointClosureSize(store, paths);
  const ns = await readBuildNixSupport(outputs, (p) => store.realPath(p));
  for (const r of ns.rejected) onRejected?.(r);
  return {
    // Each output's own closure is not needed: the joint one is known.
    outputs: outputs.map((o, i) => ({ name: o.name, path: o.path, narSize: infos[i]!.narSize, closureSize: infos[i]!.narSize })),
    nixSupport: nixSupportInfo(ns),
    closureSize,
  };
}
