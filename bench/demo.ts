/**
 * Demo benchmark: `hydrant demo --exit-when-done` twice on one fresh state
 * directory — the first run builds the jobset, the second finds every build
 * done (test/cli/demo.test.ts checks that nothing is rebuilt; this times it).
 * Prints one JSON object.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../test/helpers/cli.ts';
import { benchOptions, log, median, round } from './common.ts';

export const describe = 'hydrant demo twice on one state directory: building everything, then finding it done';

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const { reps } = benchOptions(argv, { reps: 3 });
  const first: number[] = [];
  const second: number[] = [];
  for (let r = 0; r < reps; r++) {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-demo-'));
    try {
      for (const times of [first, second]) {
        const t0 = performance.now();
        const res = await runCli(['demo', '--exit-when-done', '--state-dir', dir]);
        if (res.code !== 0) throw new Error(`demo exited ${res.code}:\n${res.stdout}\n${res.stderr}`);
        times.push((performance.now() - t0) / 1000);
        log(`rep ${r + 1}: ${times === first ? 'first' : 'second'} run ${round(times.at(-1)!, 2)} s`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return {
    reps,
    firstRunSeconds: round(median(first), 2),
    secondRunSeconds: round(median(second), 2),
    ratio: round(median(second) / median(first), 2),
    all: { first: first.map((x) => round(x, 2)), second: second.map((x) => round(x, 2)) },
  };
}
