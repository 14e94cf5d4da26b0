import { StepBusy } from '../db/status.ts';
import type { BuilderPort, StepFinisher } from './builder-port.ts';

/**
 * A builder port whose results pass through `finisher` before they reach
 * the scheduler: the step stays busy (post-processing) until its outputs
 * are rooted and uploaded, so a step is never recorded as done with outputs
 * the caches lack. `built` is told as soon as the builder is done with the
 * job, so that its slot can take the next step meanwhile.
 */
export function finishingPort(port: BuilderPort, finisher: StepFinisher, built: (jobId: string) => void = () => {}): BuilderPort {
  return {
    start(job, report, progress) {
      port.start(
        job,
        (outcome) => {
          if (outcome.kind === 'transient') return report(outcome);
          progress(StepBusy.PostProcessing);
          built(job.jobId);
          finisher.finish(job, outcome).then(report, (err: unknown) =>
            report({ kind: 'transient', errorMsg: `post-processing failed: ${String((err as Error)?.message ?? err)}`, machineFault: false }),
          );
        },
        progress,
      );
    },
    abort: (jobId) => port.abort(jobId),
  };
}
