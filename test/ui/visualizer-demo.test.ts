import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/db/embedded.ts';
import { startCli } from '../helpers/cli.ts';
import { launchBrowser, newPage, resultPath } from './harness.ts';

/* Code passed to page.evaluate runs in the browser; the project compiles without the DOM library. */
declare const window: any; // eslint-disable-line @typescript-eslint/no-explicit-any
declare const document: any; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * The visualizer against `hydrant demo --http-port N` (a child process: the
 * runner, two builders with their own Nix stores, the bundled jobset): the
 * URL the demo prints, machines, queues, and the release build's steps
 * changing state while it builds, without reloading the page. Leaves a
 * screenshot in test-results/visualizer.png (and, with
 * HYDRANT_UI_SCREENSHOT=docs/visualizer.png, the README's).
 */
describe('visualizer on hydrant demo', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-ui-demo-'));
  let demo: ReturnType<typeof startCli>;
  let browser: Browser;
  beforeAll(async () => {
    const port = await freePort();
    demo = startCli(['demo', '--state-dir', dir, '--http-port', String(port)]);
    browser = await launchBrowser();
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    if (demo && demo.child.exitCode === null) {
      demo.child.kill('SIGINT');
      const t = setTimeout(() => demo.child.kill('SIGKILL'), 20_000);
      await demo.exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  }, 40_000);

  it("follows the release build's steps live, opens a step's history, and shows machines, queues and lifecycles", async () => {
    const line = await demo.waitFor(/visualizer on http:\/\/127\.0\.0\.1:\d+\//, 60_000);
    const url = /http:\/\/\S+\//.exec(line)![0];
    const errors: string[] = [];
    const page = await newPage(browser, errors);
    await page.goto(url);
    await page.evaluate(() => (window.__sameDocument = true));
    await expect.poll(() => page.getByTestId('machine').count(), { timeout: 60_000 }).toBe(2);

    // The release build, once the demo has queued it.
    const release = page.getByTestId('build-select').locator('option', { hasText: 'demo-release' });
    await release.waitFor({ state: 'attached', timeout: 60_000 });
    await page.getByTestId('build-select').selectOption((await release.getAttribute('value'))!);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="dag"]')!.getAttribute('data-steps')) > 1, null, { timeout: 30_000 });
    // A queue per system, while the demo still has steps waiting.
    await expect.poll(() => page.getByTestId('queue').count(), { timeout: 10_000 }).toBeGreaterThan(0);

    // The step of that build that finishes last (unfinished, in the highest layer), so that it is
    // still unfinished once found: found by name, then clicked on the canvas where the graph draws it.
    const pick = await page.evaluate(() => {
      const v = window.__hydrantViz;
      let best: number | null = null;
      for (const id of v.dag.ids as number[]) {
        if (!['queued', 'runnable', 'dispatched', 'building'].includes(v.stateOf(id))) continue;
        if (best === null || v.dag.layerOfId(id) > v.dag.layerOfId(best)) best = id;
      }
      return { id: best!, name: v.dag.nameOf(best) as string };
    });
    await page.getByTestId('step-find').fill(pick.name);
    expect(Number(await page.getByTestId('find-match').first().getAttribute('data-step'))).toBe(pick.id);
    await page.getByTestId('step-find').fill('');
    const point = await page.evaluate((id) => window.__hydrantViz.pointOf(id), pick.id);
    await page.mouse.click(point.x, point.y);
    await page.mouse.move(1, 1);
    await page.getByTestId('step-id').filter({ hasText: String(pick.id) }).waitFor();
    expect(await page.getByTestId('step-name').textContent()).toBe(pick.name);
    const before = (await page.getByTestId('step-state').textContent())!;
    expect(['queued', 'runnable', 'dispatched', 'building']).toContain(before);

    // The state shown changes as the builders work, without a reload.
    await page.waitForFunction((s) => document.querySelector('[data-testid="step-state"]')?.textContent !== s, before, { timeout: 60_000 });
    const after = (await page.getByTestId('step-state').textContent())!;
    expect(after).not.toBe(before);
    expect(await page.evaluate(() => window.__sameDocument)).toBe(true);
    // Its history (GET /status/step/ID) lists the transitions; the lifecycle diagram marks where it is.
    await expect.poll(() => page.getByTestId('history-entry').count(), { timeout: 10_000 }).toBeGreaterThan(0);
    expect(await page.getByTestId('step-history').textContent()).toMatch(/DEPS_DONE|DISPATCH|START|SUCCEED/);
    await page.waitForFunction(() => {
      const s = document.querySelector('[data-testid="step-state"]')!.textContent;
      return document.querySelector(`[data-testid="step-diagram-state-${s}"]`)?.getAttribute('data-active') === 'true';
    });

    // Machines: both builders with their health; the builder lifecycle counts them; a queue per system.
    expect(await page.getByTestId('machine-health').first().textContent()).toBeTruthy();
    const counted = await page.$$eval('[data-testid^="builder-diagram-state-"]', (els) => els.reduce((n, e) => n + Number(e.getAttribute('data-count') ?? 0), 0));
    expect(counted).toBe(2);
    expect(await page.getByTestId('feed-status').getAttribute('data-state')).toBe('live');

    const shot = resultPath('visualizer.png');
    await page.screenshot({ path: shot });
    if (process.env.HYDRANT_UI_SCREENSHOT) copyFileSync(shot, process.env.HYDRANT_UI_SCREENSHOT);
    expect(errors).toEqual([]);
  }, 120_000);

  it('after the demo: the first screen lists the builds and their outcome; the failed build shows its graph, step row and log; the dependent build links to it', async () => {
    await demo.waitFor(/outcome: as expected/, 240_000);
    const url = /http:\/\/\S+\//.exec(demo.output().match(/visualizer on http:\/\/127\.0\.0\.1:\d+\//)![0])![0];
    const errors: string[] = [];
    const page = await newPage(browser, errors);
    await page.goto(url);
    // Nothing chosen: every build of the jobset, with its outcome.
    await expect.poll(() => page.getByTestId('history-row').count(), { timeout: 20_000 }).toBe(12);
    const outcomes = await page.$$eval('[data-testid="history-row"]', (els) => els.map((e) => [e.getAttribute('data-job'), e.getAttribute('data-outcome')]));
    expect(Object.fromEntries(outcomes)).toEqual({
      toolchain: 'success', libcore: 'success', libnet: 'success', libui: 'success', cli: 'success', assets: 'success', app: 'success',
      manual: 'success', checks: 'success', release: 'success', broken: 'failed', plugin: 'depFailed',
    });
    const rowOf = (job: string) => page.locator(`[data-testid="history-row"][data-job="${job}"]`);
    const brokenId = Number(await rowOf('broken').getAttribute('data-build'));

    // The dependent build's failing step row links to the build that failed.
    await rowOf('plugin').locator('button').click();
    await expect.poll(() => page.getByTestId('build-info').textContent(), { timeout: 20_000 }).toContain('finished: depFailed');
    await page.getByTestId('step-propagated').waitFor({ timeout: 20_000 });
    expect(await page.getByTestId('step-propagated').textContent()).toBe(`build ${brokenId}`);
    await page.getByTestId('step-propagated').click();

    // The failed build: its graph, the failed step's row, its log text.
    await expect.poll(() => page.getByTestId('build-info').textContent(), { timeout: 20_000 }).toContain(`build ${brokenId}`);
    await expect.poll(() => page.getByTestId('build-info').textContent(), { timeout: 20_000 }).toContain('finished: failed');
    await expect.poll(async () => Number(await page.getByTestId('dag').getAttribute('data-steps')), { timeout: 20_000 }).toBeGreaterThan(0);
    await expect.poll(() => page.getByTestId('step-status').textContent(), { timeout: 20_000 }).toBe('failed');
    expect((await page.getByTestId('step-error').textContent())?.length).toBeGreaterThan(0);
    await page.getByTestId('step-log-button').click();
    await expect.poll(() => page.getByTestId('step-log').textContent(), { timeout: 20_000 }).toContain('error: this job fails on purpose');
    expect(await page.getByTestId('step-log').getAttribute('data-stored')).toBe('ended');
    await page.screenshot({ path: resultPath('visualizer-finished.png') });
    expect(errors).toEqual([]);
  }, 300_000);
});
