import type { StepRecord } from './model.ts';

/**
 * Determinism checks as Hydra's C++ queue runner requests them (the Rust
 * runner has none): a step whose derivation sets `isDetermistic = "1"` is
 * built once more and must come out the same (enforced); a step needed by a
 * build of a jobset listed in `jobsetRepeats` ("project:jobset:N", Hydra's
 * `xxx-jobset-repeats`, hydra-queue-runner.cc:833-838) is built N more
 * times, the largest N of its jobsets winning (builder.cc:102, 133-138).
 * The builder runs the rounds (Nix's `repeat` and `enforce-determinism`,
 * build-remote.cc:343-344) and reports how many ran and whether they differed.
 */
export interface Determinism {
  readonly repeats: number;
  readonly enforceDeterminism: boolean;
}

const NONE: Determinism = Object.freeze({ repeats: 0, enforceDeterminism: false });

/** `project:jobset:N` entries as a map from `project:jobset` to N; a later entry for the same jobset wins. */
export function parseJobsetRepeats(entries: readonly string[]): ReadonlyMap<string, number> {
  const m = new Map<string, number>();
  for (const e of entries) {
    const parts = e.split(':');
    if (parts.length !== 3 || !/^\d+$/.test(parts[2]!)) throw new RangeError(`bad jobsetRepeats entry '${e}': expected project:jobset:N`);
    m.set(`${parts[0]}:${parts[1]}`, Number(parts[2]));
  }
  return m;
}

const parsed = new WeakMap<readonly string[], ReadonlyMap<string, number>>();

/** The rounds `step` is built with under `jobsetRepeats` (the configured list, parsed once). */
export function determinismOf(step: StepRecord, jobsetRepeats: readonly string[] | undefined): Determinism {
  const enforce = step.isDeterministic === true;
  let repeats = enforce ? 1 : 0;
  if (jobsetRepeats && jobsetRepeats.length > 0) {
    let table = parsed.get(jobsetRepeats);
    if (!table) parsed.set(jobsetRepeats, (table = parseJobsetRepeats(jobsetRepeats)));
    for (const j of step.jobsets) repeats = Math.max(repeats, table.get(`${j.project}:${j.name}`) ?? 0);
  }
  return repeats === 0 ? NONE : { repeats, enforceDeterminism: enforce };
}
