import type { BuildRecord, StepRecord } from '../actors/model.ts';

/**
 * The unfinished steps a build needs: its own step and, transitively, their
 * dependencies, each once, at most `limit` of them (`truncated` when cut).
 */
export function buildClosure(b: BuildRecord, limit = Number.POSITIVE_INFINITY): { steps: StepRecord[]; truncated: boolean } {
  const seen = new Set<StepRecord>();
  const stack = b.toplevel ? [b.toplevel] : [];
  while (stack.length > 0) {
    const step = stack.pop()!;
    if (seen.has(step)) continue;
    if (seen.size >= limit) return { steps: [...seen], truncated: true };
    seen.add(step);
    for (const d of step.deps) stack.push(d);
  }
  return { steps: [...seen], truncated: false };
}
