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
  let browser: Browser;
  beforeAll(async () => {
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
  });

  it("shows a failed build's step rows, the error message and the step's log", async () => {
    const runner = await start();
    runner.builder('b1');
    await waitFor(async () => ((await (await fetch(`${runner.url}/status/machines`)).json()) as { machinesCount: number }).machinesCount === 1, 30_000, 'the builder');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in { bad = mk { name = "bad-${nonce}"; script = "echo compiling; echo kaboom-${nonce} >&2; exit 2"; }; }`);
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'vf', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);
    const id = (await db.pool.query("select id from builds where job = 'bad'")).rows[0].id as number;
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [id])).rows[0].finished === 1, 90_000, 'the build to fail');

    const errors: string[] = [];
    const page = await newPage(browser, errors);
    await page.goto(`${runner.url}/?build=${id}`);
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
    expect(errors).toEqual([]);
  }, 180_000);
});
