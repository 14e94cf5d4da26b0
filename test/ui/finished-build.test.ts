import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.ts';
import { useInProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { launchBrowser, newPage, resultPath } from './harness.ts';

describe('visualizer of a finished build', () => {
  const { db, dir, start } = useInProcessRunner('viz-finished');
  // Gates of the running step below (both opened at the end, so that it never outlives a failed test).
  const [writeLater, finish] = [join(dir, 'write-later'), join(dir, 'finish')];
  let browser: Browser;
  beforeAll(async () => {
    browser = await launchBrowser();
  });
  afterAll(async () => {
    for (const gate of [writeLater, finish]) writeFileSync(gate, '');
    await browser?.close();
  });

  it("shows a failed build's step rows, the error message and the step's log", async () => {
    // shutdownGraceInS: the stop in afterAll has nothing to wait for (slow may still build, its builder killed first).
    const runner = await start({ shutdownGraceInS: 1 });
    runner.builder('b1');
    await waitFor(async () => ((await (await fetch(`${runner.url}/status/machines`)).json()) as { machinesCount: number }).machinesCount === 1, 90_000, 'the builder');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV}
        bad = mk { name = "bad-${nonce}"; script = "echo compiling; echo kaboom-${nonce} >&2; exit 2"; };
      in { inherit bad; dependent = mk { name = "dependent-${nonce}"; script = "/bin/cat \${bad} > $out"; }; }`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'vf', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);
    const id = (await db.pool.query("select id from builds where job = 'bad'")).rows[0].id as number;
    const dependent = (await db.pool.query("select id from builds where job = 'dependent'")).rows[0].id as number;
    await waitFor(async () => (await db.pool.query('select count(*)::int as n from builds where finished = 0')).rows[0].n === 0, 90_000, 'the builds to fail');

    const errors: string[] = [];
    const page = await newPage(browser, errors);
    // The first screen, nothing chosen: the Builds panel lists both builds with their outcome.
    await page.goto(runner.url);
    const rowOf = (b: number) => page.locator(`[data-testid="history-row"][data-build="${b}"]`);
    await expect.poll(() => rowOf(id).getAttribute('data-outcome'), { timeout: 20_000 }).toBe('failed');
    expect(await rowOf(dependent).getAttribute('data-outcome')).toBe('depFailed');
    expect(await page.getByTestId('history-row').count()).toBe(2);
    // Filtered by outcome and by name.
    await page.getByTestId('history-status').selectOption('failed');
    await expect.poll(() => page.getByTestId('history-row').count(), { timeout: 10_000 }).toBe(2);
    await page.getByTestId('history-find').fill('dependent');
    await expect.poll(() => page.getByTestId('history-row').count(), { timeout: 10_000 }).toBe(1);
    // The dependent build's row names the build whose failure took it down, and links to it.
    await rowOf(dependent).locator('button').click();
    await expect.poll(() => page.getByTestId('build-info').textContent(), { timeout: 20_000 }).toContain('finished: depFailed');
    await page.getByTestId('step-propagated').click({ timeout: 20_000 });
    const info = page.getByTestId('build-info');
    await expect.poll(() => info.textContent(), { timeout: 20_000 }).toContain('finished: failed');
    // The step that failed the build is drawn and selected, with its row's status, machine and error.
    await expect.poll(async () => Number(await page.getByTestId('dag').getAttribute('data-steps')), { timeout: 20_000 }).toBe(1);
    await expect.poll(() => page.getByTestId('step-status').textContent(), { timeout: 20_000 }).toBe('failed');
    expect(await page.getByTestId('step-machine').textContent()).toBe('b1');
    expect(await page.getByTestId('step-name').textContent()).toContain(`bad-${nonce}`);
    expect((await page.getByTestId('step-error').textContent())?.length).toBeGreaterThan(0);

    await page.getByTestId('step-log-button').click();
    const log = page.getByTestId('step-log');
    await expect.poll(() => log.textContent(), { timeout: 20_000 }).toContain(`kaboom-${nonce}`);
    expect(await log.textContent()).toContain('compiling');
    await page.screenshot({ path: resultPath('finished-build.png') });

    // A running step's log panel follows what the step writes. The step writes its second line, and
    // ends, when the test opens each gate: it is still running while the panel is checked, however slow the machine.
    const waitGate = (gate: string) => `while [ ! -e ${gate} ]; do /bin/sleep 0.1; done`;
    writeFileSync(
      join(dir, 'slow.nix'),
      `{ }: let ${MK_DRV} in { slow = mk { name = "slow-${nonce}"; script = "echo started-${nonce}; ${waitGate(writeLater)}; echo later-${nonce}; ${waitGate(finish)}; echo > $out"; }; }`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'vf', '--jobset', 'slow', '--create', '--file', join(dir, 'slow.nix')])).code).toBe(0);
    const slow = (await db.pool.query("select id from builds where job = 'slow'")).rows[0].id as number;
    type Steps = { steps: { id: number; buildId: number; busyName: string }[] };
    let stepId = 0;
    await waitFor(async () => {
      const running = ((await (await fetch(`${runner.url}/status/steps`)).json()) as Steps).steps.find((st) => st.buildId === slow && st.busyName === 'building');
      stepId = running?.id ?? 0;
      return stepId > 0;
    }, 60_000, 'slow to build');
    await page.goto(`${runner.url}/?build=${slow}&step=${stepId}`);
    await page.getByTestId('step-log-button').click({ timeout: 20_000 });
    const live = page.getByTestId('step-log');
    await expect.poll(() => live.textContent(), { timeout: 20_000 }).toContain(`started-${nonce}`);
    expect(await live.getAttribute('data-stored')).toBe('live');
    writeFileSync(writeLater, '');
    await expect.poll(() => live.textContent(), { timeout: 30_000 }).toContain(`later-${nonce}`);
    // Appended once, by offset: the first line is not fetched again.
    expect((await live.textContent())!.split(`started-${nonce}`).length).toBe(2);
    expect(Number(await live.getAttribute('data-followed'))).toBeGreaterThan(0);
    expect(errors).toEqual([]);
    writeFileSync(finish, '');
  }, 180_000);
});
