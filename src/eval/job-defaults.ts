/** What Hydra records for a job whose `meta` leaves these unset. */
export const JOB_DEFAULTS = Object.freeze({ priority: 100, timeout: 36000, maxSilent: 7200 });
