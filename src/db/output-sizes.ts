/**
 * A build's `size` and `closureSize`. Hydra's C++ runner records size =
 * the outputs' NAR sizes summed and closureSize = the NAR sizes of the
 * outputs' joint closure summed: `joint`, computed from the runner's store
 * once the outputs are in it. Without it (a store that could not tell), the
 * per-output closures summed, as Hydra's Rust queue runner records from its
 * builders' reports: larger by the paths the outputs share. Never below
 * size either way. (The largest single closure, used once, fell below size
 * whenever one output did not reach the others.)
 */
export function buildSizes(outputs: readonly { narSize: number; closureSize: number }[], joint?: number): { size: number; closureSize: number } {
  const size = outputs.reduce((n, o) => n + o.narSize, 0);
  const closureSize = joint ?? outputs.reduce((n, o) => n + Math.max(o.closureSize, o.narSize), 0);
  return { size, closureSize: Math.max(closureSize, size) };
}
