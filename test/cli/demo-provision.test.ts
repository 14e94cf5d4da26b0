import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.ts';

/** Processes with an argument under `dir` (the provisioned builders' configuration files are there). */
function processesUnder(dir: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').some((a) => a.startsWith(dir))) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

describe('hydrant demo --provision', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-demo-provision-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('starts with no builders, the provisioner brings them up, every build ends as expected, and none is left running', async () => {
    const r = await runCli(['demo', '--provision', '--exit-when-done', '--state-dir', dir]);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/builders: none yet; the provisioner starts up to 2/);
    expect(r.stdout).toMatch(/provisioner: \d+ runnable, [12] builders? wanted, 0 joined, [12] up/);
    expect(r.stdout).toMatch(/built on hydrant-provisioned-/);
    expect(r.stdout).toContain('outcome: as expected');
    // The demo destroyed its builders: no process, no store left.
    expect(processesUnder(dir)).toEqual([]);
    expect(readdirSync(join(dir, 'provisioner', 'local'))).toEqual([]);
  }, 300_000);
});
