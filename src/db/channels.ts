/** Channels Hydra's triggers and evaluator NOTIFY on, which the runner LISTENs to. */
export const HYDRA_CHANNELS = Object.freeze([
  'builds_added',
  'builds_restarted',
  'builds_cancelled',
  'builds_deleted',
  'builds_bumped',
  'jobset_shares_changed',
] as const);
