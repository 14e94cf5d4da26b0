import type { BuilderPort, StepJob, StepOutcome } from '../actors/builder-port.ts';
import { unixNow } from '../actors/builder-port.ts';
import { StepBusy, type StepBusyCode } from '../db/status.ts';
import { BuildLogWriter } from '../nix/build-log-writer.ts';
import { buildLogPath } from '../nix/build-logs.ts';
import { builtOutputs, jointClosureSize, pathSizes, runNixBuild, type NixBuildHandle } from './nix-build.ts';
import { stepSuccess } from './step-success.ts';

/**
 * A builder that builds with real Nix in the runner's own store. It stands
 * behind the same port as remote builder agents, so the scheduler's tests
 * can build real derivations without the network protocol.
 */
export class LocalNixBuilder implements BuilderPort {
  private readonly running = new Map<string, NixBuildHandle>();

  constructor(private readonly o: { hydraDataDir: string; env?: NodeJS.ProcessEnv }) {}

  start(job: StepJob, report: (o: StepOutcome) => void, progress: (busy: StepBusyCode) => void): void {
    const logFile = buildLogPath(this.o.hydraDataDir, job.drvPath);
    // A log that cannot be written (a full disk) stops the build: the attempt is aborted and retried, as in Hydra.
    const log = new BuildLogWriter(logFile, 'w', () => handle.kill());
    const startTime = unixNow();
    progress(StepBusy.Building);
    const handle = runNixBuild(job.drvPath, job, (chunk) => void log.write(chunk), this.o.env);
    this.running.set(job.jobId, handle);
    void handle.done
      .then(async (r): Promise<StepOutcome> => {
        const logError = await log.close();
        if (logError) return { kind: 'transient', errorMsg: logError.message, machineFault: false };
        const stopTime = unixNow();
        if (r.kind === 'error') return { kind: 'transient', errorMsg: r.errorMsg, machineFault: false };
        const rounds = { timesBuilt: r.timesBuilt, isNonDeterministic: r.isNonDeterministic };
        if (r.kind === 'failed') return { kind: 'failure', status: r.status, errorMsg: r.errorMsg, startTime, stopTime, logFile, ...rounds };
        progress(StepBusy.PostProcessing);
        const outputs = await builtOutputs(job.drvPath, job.outputs, this.o.env);
        const sizes = await pathSizes([...outputs.values()], this.o.env);
        const built = [...outputs].map(([name, path]) => ({ name, path, ...(sizes.get(path) ?? { narSize: 0, closureSize: 0 }) }));
        const tooBig = job.maxOutputSize > 0 ? built.find((o) => o.narSize > job.maxOutputSize) : undefined; // 0: no limit, as upstream
        if (tooBig) {
          return { kind: 'failure', status: 11, errorMsg: `output ${tooBig.name} is ${tooBig.narSize} bytes (limit ${job.maxOutputSize})`, startTime, stopTime, logFile };
        }
        const closureSize = await jointClosureSize([...outputs.values()], this.o.env);
        return stepSuccess({ outputs: built, startTime, stopTime, overheadMs: 0, logFile, closureSize, ...rounds });
      })
      .catch((err: unknown): StepOutcome => ({ kind: 'transient', errorMsg: String((err as Error)?.message ?? err), machineFault: false }))
      .then((outcome) => {
        if (this.running.delete(job.jobId)) report(outcome);
      });
  }

  abort(jobId: string): void {
    const h = this.running.get(jobId);
    this.running.delete(jobId);
    h?.kill();
  }
}
