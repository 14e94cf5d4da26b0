import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { useTestDatabase } from '../helpers/db.ts';
import { launchBrowser, newPage, resultPath, startSimRunner, type SimRunner } from './harness.ts';

/* Code passed to page.evaluate runs in the browser; the project compiles without the DOM library. */
declare const window: any; // eslint-disable-line @typescript-eslint/no-explicit-any
declare const document: any; // eslint-disable-line @typescript-eslint/no-explicit-any
declare function requestAnimationFrame(cb: (t: number) => void): number;

/*
 * Behaviour only: how fast the page draws, clicks and redraws is measured by
 * `npm run -s bench -- viz` (bench/README.md), not asserted here.
 */
const STEPS = 10_000;

describe('visualizer with a 10k-step build', () => {
  const db = useTestDatabase();
  let runner: SimRunner;
  let browser: Browser;
  beforeAll(async () => {
    [runner, browser] = await Promise.all([startSimRunner(db.pool, STEPS), launchBrowser()]);
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await runner?.stop();
  });

  it('draws the whole graph, follows its steps as they change, and answers clicks, scrolls and zooms', async () => {
    expect(runner.runtime.scheduler.graph.steps.size).toBe(STEPS);
    const stepIds = new Set([...runner.runtime.scheduler.graph.steps.values()].map((s) => s.id));
    const errors: string[] = [];
    const page = await newPage(browser, errors);
    const requested: string[] = [];
    page.on('request', (r) => requested.push(new URL(r.url()).pathname));
    await page.goto(`${runner.base}/?build=${runner.buildId}`);
    await page.waitForFunction((n) => document.querySelector('[data-testid="dag"]')?.getAttribute('data-steps') === String(n) && window.__hydrantViz.firstRenderMs !== null, STEPS, { timeout: 30_000 });

    // The layout came from the worker (through comlink), never computed on the page, and it is the
    // layout the same code computes for the same graph.
    expect(requested).toContain('/ui/layout-worker.js');
    expect(requested).toContain('/ui/comlink.mjs');
    // A dynamic import written as a string, so the test runner's transform leaves it to the browser.
    await page.evaluate('window.__import = (url) => import(url)');
    const layout = await page.evaluate(async () => {
      const dag = window.__hydrantViz.dag;
      const { layersOf } = await window.__import('/ui/layout.js');
      const onPage = layersOf(dag.deps, dag.names);
      return {
        byWorker: dag.layoutClient.byWorker as number,
        onPage: dag.layoutClient.onPage as number,
        laidOut: dag.laidOut as boolean,
        same: JSON.stringify(onPage.layers) === JSON.stringify(dag.layers) && JSON.stringify([...onPage.layerOf]) === JSON.stringify([...dag.layerOf]),
        layers: dag.layers.length as number,
      };
    });
    expect(layout).toMatchObject({ onPage: 0, laidOut: true, same: true });
    // The Builds panel lists it, queued, and marks it as the one shown.
    const row = page.locator(`[data-testid="history-row"][data-build="${runner.buildId}"]`);
    await expect.poll(() => row.getAttribute('data-outcome'), { timeout: 20_000 }).toMatch(/^(queued|runnable|building)$/);
    expect(await row.getAttribute('class')).toBe('selected');
    expect(layout.byWorker).toBeGreaterThan(0);
    expect(layout.layers).toBeGreaterThan(1);

    // Of two requests, only the later one's answer is used (an older layout is never drawn).
    const superseded = await page.evaluate(async () => {
      const { LayoutClient } = await window.__import('/ui/layout-client.js');
      const client = new LayoutClient();
      const first = client.layout([[], [0]], ['a', 'b']);
      const second = client.layout([[], [0], [1]], ['a', 'b', 'c']);
      const [a, b] = await Promise.all([first, second]);
      return { first: a, second: b?.layers ?? null, byWorker: client.byWorker as number, dropped: client.dropped as number };
    });
    expect(superseded).toEqual({ first: null, second: [[0], [1], [2]], byWorker: 2, dropped: 1 });
    // Every step is in the page's graph, once, and the legend counts them all.
    const pageIds = await page.evaluate(() => window.__hydrantViz.dag.ids as number[]);
    expect(new Set(pageIds)).toEqual(stepIds);
    expect(pageIds).toHaveLength(STEPS);
    const legendTotal = async () => (await page.locator('[data-testid^="count-"]').allTextContents()).reduce((a, t) => a + Number(t), 0);
    expect(await legendTotal()).toBe(STEPS);
    expect(await page.getByTestId('count-queued').textContent()).not.toBe('0');

    // Frames keep coming while machines work through the queue and events stream in.
    await page.evaluate(() => {
      const w = window as any;
      w.__frames = 0;
      const tick = () => {
        w.__frames++;
        if (!w.__stop) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
    runner.addMachines(2, 2, 50);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="count-succeeded"]')!.textContent) >= 200, null, { timeout: 30_000 });
    // The page shows a step succeeded only once the runner has built it (it never runs ahead of the runner).
    const shownSucceeded = await page.evaluate(() => (window.__hydrantViz.dag.ids as number[]).filter((x) => window.__hydrantViz.stateOf(x) === 'succeeded'));
    const unbuilt = new Set([...runner.runtime.scheduler.graph.steps.values()].filter((s) => s.state !== 'succeeded').map((s) => s.id));
    expect(shownSucceeded.length).toBeGreaterThanOrEqual(200);
    expect(shownSucceeded.filter((x) => unbuilt.has(x))).toEqual([]);
    expect(await legendTotal()).toBe(STEPS);

    // Click a step built while the page watched: its details and its history (read from the runner) open.
    const target = await page.evaluate(() => {
      const v = window.__hydrantViz;
      // The worst case: the built step the most others need (the end of the bootstrap chain).
      let id = null;
      for (const x of v.dag.ids) if (v.stateOf(x) === 'succeeded' && (id === null || v.dag.rdepsOf(x).length > v.dag.rdepsOf(id).length)) id = x;
      return { id, point: v.pointOf(id) };
    });
    await page.mouse.click(target.point.x, target.point.y);
    await page.getByTestId('step-id').filter({ hasText: String(target.id) }).waitFor({ timeout: 15_000 });
    await page.getByTestId('history-entry').first().waitFor({ timeout: 15_000 });
    const history = await page.getByTestId('history-entry').allTextContents();
    expect(history.some((h) => h.includes('DISPATCH'))).toBe(true);
    expect(history.at(-1)).toContain('succeeded');

    // Scrolling and zooming move the view and draw a new frame.
    const view = () => page.evaluate(() => ({ scrollY: window.__hydrantViz.dag.scrollY as number, zoom: window.__hydrantViz.dag.zoom as number, frames: window.__hydrantViz.dag.frames as number }));
    const before = await view();
    await page.mouse.move(target.point.x, target.point.y);
    await page.mouse.wheel(0, 2000);
    await page.getByRole('button', { name: '+' }).click();
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const after = await view();
    expect(after.zoom).toBeCloseTo(before.zoom * 1.25);
    expect(after.scrollY).not.toBe(before.scrollY);
    expect(after.frames).toBeGreaterThan(before.frames);

    const frames = await page.evaluate(() => {
      const w = window as any;
      w.__stop = true;
      return w.__frames as number;
    });
    expect(frames).toBeGreaterThan(0);
    expect(await page.evaluate(() => window.__hydrantViz.app.events as number)).toBeGreaterThan(200);
    await page.screenshot({ path: resultPath('visualizer-10k.png') });
    expect(errors).toEqual([]);
  }, 90_000);
});
