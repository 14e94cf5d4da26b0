/**
 * Abort benchmark: a build running on a real `hydrant builder` is cancelled
 * (as Hydra's web UI does: the Builds row finished with status 4); times
 * until the runner has ended its step row and until the builder has killed
 * the build process. test/builder/agent.test.ts checks the abort for
 * behaviour only. Prints one JSON object.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { submit } from '../test/helpers/fleet.ts';
import { InProcessRunner } from '../test/helpers/in-process-runner.ts';
import { MK_DRV } from '../test/helpers/nix.ts';
import { benchOptions, log, median, round } from './common.ts';

export const describe = 'cancel a build running on a real builder: until its step row ends and its process is killed';

/** Polls `cond` every 5 ms; the time it became true, or an error after `ms`. */
async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<number> {
  const deadline = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now();
}

/** Whether a process runs exactly `args`. */
function running(args: string): boolean {
  const out = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' });
  return out.split('\n').some((l) => l.trim() === args);
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const { reps } = benchOptions(argv, { reps: 5 });
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-abort-'));
  const pg = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  const pool = createPool(pg.url, { max: 4 });
  let runner: InProcessRunner | undefined;
  try {
    await ensureSchema(pool);
    runner = await InProcessRunner.start(pg.url, dir);
    runner.builder('abort-1');
    const toRowEndedMs: number[] = [];
    const toKilledMs: number[] = [];
    for (let r = 0; r < reps; r++) {
      // A sleep whose arguments name it uniquely among the machine's processes.
      const seconds = `600.${randomBytes(3).readUIntBE(0, 3)}`;
      const file = join(dir, `sleep-${r}.nix`);
      writeFileSync(file, `{ }: let ${MK_DRV} in { sleepy = mk { name = "abort-sleep-${r}-${seconds}"; script = "echo sleeping; exec /bin/sleep ${seconds}"; }; }`);
      const { sleepy } = await submit(pg.url, file, 'main');
      await until(() => running(`/bin/sleep ${seconds}`), 120_000, 'the build to run');
      const t0 = performance.now();
      await pool.query('update builds set finished = 1, buildstatus = 4, starttime = extract(epoch from now())::int, stoptime = extract(epoch from now())::int where id = $1', [sleepy]);
      const rowEnded = until(async () => (await pool.query('select count(*)::int n from buildsteps where build = $1 and busy != 0', [sleepy])).rows[0].n === 0, 60_000, 'the step row to end');
      const killed = until(() => !running(`/bin/sleep ${seconds}`), 60_000, 'the build process to be killed');
      toRowEndedMs.push((await rowEnded) - t0);
      toKilledMs.push((await killed) - t0);
      log(`rep ${r + 1}: step row ended after ${round(toRowEndedMs.at(-1)!)} ms, process killed after ${round(toKilledMs.at(-1)!)} ms`);
    }
    return {
      reps,
      cancelToStepRowEndedMs: round(median(toRowEndedMs)),
      cancelToProcessKilledMs: round(median(toKilledMs)),
      all: { stepRowEnded: toRowEndedMs.map((x) => round(x)), processKilled: toKilledMs.map((x) => round(x)) },
    };
  } finally {
    await runner?.stop();
    await pool.end();
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
