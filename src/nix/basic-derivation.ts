import type { NixStoreHandle } from './private-store.ts';
import { parseDerivation, type Derivation } from './derivation.ts';
import { readWholeFile } from '../util/small-file.ts';

/**
 * The basic derivation BuildDerivation takes: the .drv with its input
 * derivations replaced by the outputs it uses, read from their .drv files in
 * `store`. Null when an input's output path is not fixed by its .drv.
 */
export async function basicDerivation(store: NixStoreHandle, drv: Derivation): Promise<Derivation | null> {
  if ([...drv.outputs.values()].some((o) => o.path === '')) return null;
  const inputs = new Set(drv.inputSrcs);
  for (const [inputDrv, names] of drv.inputDrvs) {
    const dep = parseDerivation((await readWholeFile(store.realPath(inputDrv))).toString('utf8'));
    for (const name of names) {
      const path = dep.outputs.get(name)?.path;
      if (!path) return null;
      inputs.add(path);
    }
  }
  return { ...drv, inputDrvs: new Map(), inputSrcs: [...inputs] };
}
