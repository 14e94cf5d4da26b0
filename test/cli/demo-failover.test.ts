import { readdirSync, readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/db/embedded.ts';
import { alive } from '../../src/db/embedded/orphan.ts';
import { runCli, startCli } from '../helpers/cli.ts';

/** Children of `parent` whose command line contains every one of `words`. */
function childPids(parent: number, words: string[]): number[] {
  const pids: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (ppid === parent && words.every((w) => argv.includes(w))) pids.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

// Builds of the demo jobset that take a while (`sleep 1`): a builder killed while it runs one surely loses it.
const SLOW = /-demo-(libcore|libnet|libui|app)-1\.0\.drv$/;

/** `hydrant demo` with a builder SIGKILLed while it builds: the demo carries on and ends as expected. */
describe('hydrant demo when a builder dies', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-demo-failover-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('retries the dead builder\'s job, restarts the builder, and still ends with the expected outcome and exit 0', async () => {
    const port = await freePort();
    const demo = startCli(['demo', '--exit-when-done', '--state-dir', dir, '--http-port', String(port)]);
    await demo.waitFor(/builders: .* joined/, 120_000);

    // Wait for a builder to run a slow build, then kill it.
    let victim: string | null = null;
    while (victim === null && demo.child.exitCode === null) {
      const { machines } = (await (await fetch(`http://127.0.0.1:${port}/status/machines`)).json()) as { machines: Record<string, { jobs: string[] }> };
      victim = Object.entries(machines).find(([, m]) => m.jobs.some((j) => SLOW.test(j)))?.[0] ?? null;
      if (victim === null) await new Promise((r) => setTimeout(r, 50));
    }
    expect(victim, demo.output()).not.toBeNull();
    const pids = childPids(demo.child.pid!, ['builder', '--machine-id', victim!]);
    expect(pids).toHaveLength(1);
    process.kill(pids[0]!, 'SIGKILL');

    const code = await demo.exited;
    const out = demo.output();
    expect(code, out).toBe(0);
    expect(out).toMatch(new RegExp(`builder ${victim} exited \\(killed by SIGKILL\\) with [1-9]\\d* jobs? running; they are retried, and it is restarted \\(1 of 3\\)`));
    expect(out).toContain('outcome: as expected');
    // The lost attempt shows as aborted on the killed builder; the build itself succeeded on a retry.
    expect(out).toMatch(new RegExp(`^ {4}${victim} +\\d+ +\\(.*\\b[1-9]\\d* aborted\\)$`, 'm'));
    // The restarted builder joined again.
    expect(readFileSync(join(dir, 'builders', `${victim}.log`), 'utf8').match(/connecting to/g)).toHaveLength(2);
  }, 240_000);

  it('a SIGKILLed demo leaves no builder or database server behind, and the next run on its state directory ends as expected', async () => {
    const demo = startCli(['demo', '--state-dir', dir]);
    await demo.waitFor(/evaluation \d+ of demo:main/, 120_000);
    const builders = childPids(demo.child.pid!, ['builder']);
    expect(builders).toHaveLength(2);
    const server = Number(readFileSync(join(dir, 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
    demo.child.kill('SIGKILL');
    await demo.exited;
    try {
      // They go by themselves (a bounded wait, not a timing assertion).
      for (let i = 0; i < 600 && [...builders, server].some(alive); i++) await new Promise((r) => setTimeout(r, 50));
      expect([...builders, server].filter(alive)).toEqual([]);
      const again = await runCli(['demo', '--exit-when-done', '--state-dir', dir]);
      expect(again.code, again.stdout + again.stderr).toBe(0);
      expect(again.stdout).toContain('outcome: as expected');
    } finally {
      for (const pid of [...builders, server].filter(alive)) process.kill(pid, 'SIGKILL');
    }
  }, 240_000);
});
