import type { BuildRecord, StepRecord } from './model.ts';
import type { StepGraph } from './step-graph.ts';

/**
 * The build a step's rows are recorded under, as Hydra's runners choose it:
 * the build whose own (top-level) derivation the step is, when one still
 * needs it, else the lowest-id build that needs it (Rust runner
 * state/mod.rs:842-845 `dependents.find(b.drv_path == drv).or_else(any)`,
 * also for unsupported steps, state/mod.rs:3554-3557; C++ builder.cc:128
 * and dispatcher.cc:373 `if (build2->drvPath == step->drvPath)`). That build is the one the
 * success leaves `isCachedBuild = 0`, and the one `build_started` names.
 */
export function rowBuild(graph: StepGraph, step: StepRecord): BuildRecord | undefined {
  let own: BuildRecord | undefined;
  // Indexed: this runs per assignment, also before the JIT has optimised it (an iterator allocates there).
  for (let i = 0; i < step.builds.length; i++) {
    const b = step.builds[i]!;
    if (!b.done && (own === undefined || b.id < own.id)) own = b;
  }
  return own ?? graph.builds.get(step.lowestBuildId) ?? graph.dependentBuilds(step)[0];
}
