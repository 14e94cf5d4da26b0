/**
 * A build's `size` and `closureSize` from what its builder reported per
 * output. Hydra's C++ runner records size = the outputs' NAR sizes summed
 * and closureSize = the NAR sizes of the outputs' joint closure summed. The
 * builder reports each output's own closure size, not the joint one; their
 * sum is what Hydra's Rust queue runner records from its builders' reports:
 * exact when the outputs' closures share nothing (as for outputs without
 * references), larger by the shared paths otherwise, and never below size.
 * (The largest single closure, used before, fell below size whenever one
 * output did not reach the others.)
 */
export function buildSizes(outputs: readonly { narSize: number; closureSize: number }[]): { size: number; closureSize: number } {
  const size = outputs.reduce((n, o) => n + o.narSize, 0);
  const closureSize = outputs.reduce((n, o) => n + Math.max(o.closureSize, o.narSize), 0);
  return { size, closureSize };
}
