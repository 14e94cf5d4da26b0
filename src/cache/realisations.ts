import { NixFormatError } from '../errors/index.ts';
import { runNixLines } from '../nix/tools.ts';
import type { Realisation } from '../nix/realisation.ts';
import { queryRealisations } from './local-path-info.ts';

/**
 * The realisations of a derivation's outputs plus, transitively, those they
 * depend on (`dependentRealisations`: outputs of input derivations, for CA
 * derivations), dependencies first: `nix copy` publishes this closure, and a
 * cache must not name a realisation it lacks. Inputs are only looked at when
 * a realisation has dependencies, so input-addressed builds cost one query.
 */
export async function realisationClosure(drvPath: string): Promise<Realisation[]> {
  const byId = new Map<string, Realisation>();
  const wanted = new Set<string>();
  const visitedDrvs = new Set<string>();
  const visit = async (drv: string, only: Set<string> | null): Promise<void> => {
    if (visitedDrvs.has(drv)) return;
    visitedDrvs.add(drv);
    const rs = await queryRealisations(drv);
    const deps = new Set<string>();
    for (const r of rs) {
      byId.set(r.id, r);
      if (only && !only.has(r.id)) continue;
      wanted.add(r.id);
      for (const id of Object.keys(r.dependentRealisations)) if (!wanted.has(id)) deps.add(id);
    }
    if (deps.size === 0) return;
    const inputs = (await runNixLines('nix-store', ['--query', '--references', drv])).filter((p) => p.endsWith('.drv'));
    for (const input of inputs) await visit(input, deps);
    for (const id of deps) {
      if (!byId.has(id)) throw new NixFormatError('realisation', `${drv}: the store has no realisation ${id} its outputs depend on`);
      wanted.add(id);
    }
  };
  await visit(drvPath, null);

  // Dependencies first (depth-first post-order).
  const ordered: Realisation[] = [];
  const placed = new Set<string>();
  const place = (id: string): void => {
    if (placed.has(id)) return;
    placed.add(id);
    const r = byId.get(id)!;
    for (const dep of Object.keys(r.dependentRealisations).sort()) place(dep);
    ordered.push(r);
  };
  for (const id of [...wanted].sort()) place(id);
  return ordered;
}
