import { DemoError } from '../errors/index.ts';
import { BuilderProcess, type BuilderProcessOptions } from './builders.ts';

/** How often one builder may die before the demo gives up on it. */
export const MAX_RESTARTS = 3;

/**
 * The demo's builder agents, kept running: a builder that dies (SIGKILL, the
 * OOM killer, a crash) is started again under the same machine id. The runner
 * then settles its lost jobs at once (the agent joins again without them) and
 * retries them on whichever builder is free, so the demo shows failover and
 * still ends with the expected outcome. A builder that keeps dying fails the
 * demo with its last output.
 */
export class BuilderFleet {
  readonly builders: BuilderProcess[];
  private readonly restarts = new Map<string, number>();

  constructor(options: readonly BuilderProcessOptions[]) {
    this.builders = options.map((o) => new BuilderProcess(o));
  }

  /**
   * Restarts every builder that died; returns one line for each (naming the
   * jobs it had, from `jobsOf`). Throws DemoError once one died more than
   * MAX_RESTARTS times.
   */
  async supervise(jobsOf: (machineId: string) => number): Promise<string[]> {
    const lines: string[] = [];
    for (const [i, b] of this.builders.entries()) {
      if (b.running) continue;
      const id = b.o.machineId;
      const n = (this.restarts.get(id) ?? 0) + 1;
      if (n > MAX_RESTARTS) throw new DemoError(`builder ${id} exited ${n} times (last: ${b.exitDescription()}); its last output:\n${b.lastLines()}`);
      this.restarts.set(id, n);
      await b.stop(); // closes its log
      const jobs = jobsOf(id);
      lines.push(`  builder ${id} exited (${b.exitDescription()}) with ${jobs} job${jobs === 1 ? '' : 's'} running; ${jobs > 0 ? 'they are retried, and ' : ''}it is restarted (${n} of ${MAX_RESTARTS})`);
      this.builders[i] = new BuilderProcess(b.o);
    }
    return lines;
  }

  killAll(): void {
    for (const b of this.builders) b.child.kill('SIGKILL');
  }

  stop(): Promise<void> {
    return Promise.all(this.builders.map((b) => b.stop())).then(() => {});
  }
}
