/**
 * Visualizer benchmark: the page on a build of `--steps` steps (a synthetic
 * nixpkgs-shaped DAG, simulated builders, embedded PostgreSQL) in headless
 * Chromium. Times what test/ui/large-build.test.ts checks only for behaviour:
 * the first frame, the longest main-thread stall while step events stream in,
 * a click to the step's details and history, and a frame after scrolling and
 * zooming. Prints one JSON object.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { launchBrowser, newPage, startSimRunner } from '../test/ui/harness.ts';
import { benchOptions, log, median, round } from './common.ts';

export const describe = 'the visualizer on a large build in headless Chromium: first render, frame gaps, click, redraw';

/* Code passed to page.evaluate runs in the browser; the project compiles without the DOM library. */
declare const window: any; // eslint-disable-line @typescript-eslint/no-explicit-any
declare const document: any; // eslint-disable-line @typescript-eslint/no-explicit-any
declare function requestAnimationFrame(cb: (t: number) => void): number;

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, { steps: 10000, reps: 3, 'succeeded-before-click': 200 });
  const { steps, reps } = values;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-viz-'));
  const pg = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  const pool = createPool(pg.url, { max: 8 });
  const browser = await launchBrowser();
  try {
    await ensureSchema(pool);
    log(`runner with one build of ${steps} steps`);
    const runner = await startSimRunner(pool, steps);
    const url = `${runner.base}/?build=${runner.buildId}`;
    const errors: string[] = [];

    // First render, on fresh pages while nothing runs (the same tree each time).
    const firstRenderMs: number[] = [];
    const treeFetchMs: number[] = [];
    for (let r = 0; r < reps; r++) {
      const page = await newPage(browser, errors);
      await page.goto(url);
      await page.waitForFunction((n) => document.querySelector('[data-testid="dag"]')?.getAttribute('data-steps') === String(n) && window.__hydrantViz.firstRenderMs !== null, steps, { timeout: 120_000 });
      firstRenderMs.push(await page.evaluate(() => window.__hydrantViz.firstRenderMs as number));
      treeFetchMs.push(await page.evaluate(() => window.__hydrantViz.app.timings.treeFetchMs as number));
      log(`first render ${round(firstRenderMs.at(-1)!)} ms`);
      await page.close();
    }

    // One page watches while machines work through the queue.
    const page = await newPage(browser, errors);
    await page.goto(url);
    await page.waitForFunction(() => window.__hydrantViz.firstRenderMs !== null, null, { timeout: 120_000 });
    // A string, not a function: tsx would wrap a named inner function in a helper the page lacks.
    await page.evaluate(`(() => {
      window.__gaps = { max: 0, frames: 0 };
      let last = performance.now();
      const tick = (t) => {
        window.__gaps.max = Math.max(window.__gaps.max, t - last);
        window.__gaps.frames++;
        last = t;
        if (!window.__gaps.stop) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    })()`);
    const streamStart = performance.now();
    runner.addMachines(2, 2, 50);
    await page.waitForFunction((n) => Number(document.querySelector('[data-testid="count-succeeded"]')!.textContent) >= n, values['succeeded-before-click'], { timeout: 120_000 });

    // Clicks on built steps (the most needed first): details shown, then history read from the runner.
    const targets = await page.evaluate((k) => {
      const v = window.__hydrantViz;
      const built = v.dag.ids.filter((x: number) => v.stateOf(x) === 'succeeded');
      built.sort((a: number, b: number) => v.dag.rdepsOf(b).length - v.dag.rdepsOf(a).length);
      return built.slice(0, k) as number[];
    }, reps);
    const clickToDetailsMs: number[] = [];
    const clickToHistoryMs: number[] = [];
    for (const id of targets) {
      const point = await page.evaluate((x) => window.__hydrantViz.pointOf(x), id);
      await page.evaluate(() => (window.__hydrantViz.app.timings.selectToHistoryMs = undefined));
      await page.mouse.click(point.x, point.y);
      await page.getByTestId('step-id').filter({ hasText: String(id) }).waitFor({ timeout: 30_000 });
      await page.waitForFunction(() => window.__hydrantViz.app.timings.selectToHistoryMs !== undefined, null, { timeout: 30_000 });
      const t = await page.evaluate(() => window.__hydrantViz.app.timings as { selectToShownMs: number; selectToHistoryMs: number });
      clickToDetailsMs.push(t.selectToShownMs);
      clickToHistoryMs.push(t.selectToHistoryMs);
    }

    // A frame after scrolling and zooming.
    const drawMs: number[] = [];
    for (let r = 0; r < reps; r++) {
      await page.mouse.move(400, 400);
      await page.mouse.wheel(0, 2000);
      await page.locator(r % 2 ? '#zoom-out' : '#zoom-in').click();
      drawMs.push(await page.evaluate(() => new Promise<number>((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(window.__hydrantViz.dag.lastDrawMs))))));
    }
    const gaps = await page.evaluate(() => {
      const w = window as any;
      w.__gaps.stop = true;
      return w.__gaps as { max: number; frames: number };
    });
    const streamSeconds = (performance.now() - streamStart) / 1000;
    const events = await page.evaluate(() => window.__hydrantViz.app.events as number);
    const maxDrawMs = await page.evaluate(() => window.__hydrantViz.dag.maxDrawMs as number);
    await page.close();
    await runner.stop();
    return {
      steps,
      reps,
      firstRenderMs: round(median(firstRenderMs)),
      firstRenderMsAll: firstRenderMs.map((x) => round(x)),
      treeFetchMs: round(median(treeFetchMs)),
      clickToDetailsMs: round(median(clickToDetailsMs)),
      clickToHistoryMs: round(median(clickToHistoryMs)),
      drawAfterScrollZoomMs: round(median(drawMs), 2),
      maxDrawMs: round(maxDrawMs, 2),
      streaming: { seconds: round(streamSeconds, 2), events, eventsPerSecond: round(events / streamSeconds, 1), frames: gaps.frames, longestFrameGapMs: round(gaps.max) },
      pageErrors: errors.length,
    };
  } finally {
    await browser.close();
    await pool.end();
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
