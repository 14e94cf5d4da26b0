import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lifecycle } from '../../src/daemon/lifecycle.ts';
import { HttpError } from '../../src/errors/index.ts';
import { Router } from '../../src/http/router.ts';
import { startHttpApi, type HttpApi } from '../../src/http/server.ts';
import { registerViewerRoutes } from '../../src/http/viewer-routes.ts';
import { SEARCH_MAX_LENGTH } from '../../src/status/build-search.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { quietLog } from '../helpers/runtime.ts';
import { launchBrowser, newPage, resultPath } from './harness.ts';

const path = (c: string, name: string): string => `/nix/store/${c.repeat(32)}-${name}`;

describe("the Builds panel's search box", () => {
  const db = useTestDatabase();
  let browser: Browser;
  let http: HttpApi;
  const ids: Record<string, number> = {};

  beforeAll(async () => {
    const jobset = await createJobset(db.pool, 'nixpkgs', 'trunk');
    const add = async (name: string, drv: string, out: string, machine: string): Promise<void> => {
      const { rows } = await db.pool.query(
        `insert into builds (finished, buildstatus, timestamp, starttime, stoptime, jobset_id, job, drvpath, nixname, system)
         values (1, 0, 1700000000, 1700000001, 1700000002, $1, $2, $3, $2, 'x86_64-linux') returning id`,
        [jobset, name, drv],
      );
      ids[name] = rows[0].id as number;
      await db.pool.query("insert into buildoutputs (build, name, path) values ($1, 'out', $2)", [ids[name], out]);
      await db.pool.query("insert into buildsteps (build, stepnr, type, drvpath, busy, status, machine) values ($1, 1, 0, $2, 0, 0, $3)", [ids[name], drv, machine]);
    };
    await add('hello', path('a', 'hello.drv'), path('b', 'hello'), 'alpha');
    await add('curl', path('c', 'curl.drv'), path('d', 'curl'), 'beta');
    await add('100%_done', path('f', 'done.drv'), path('g', 'done'), 'beta');
    const router = new Router(() => {
      throw new HttpError(403, 'read-only');
    });
    const lifecycle = new Lifecycle();
    await registerViewerRoutes(router, { lifecycle, scheduler: () => null, startedAt: Date.now(), db: db.pool });
    http = await startHttpApi(router, '127.0.0.1:0', quietLog);
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
    await http?.close();
  });

  it('finds builds by id, store path, hash part, job and machine; shows refusals', async () => {
    const errors: string[] = [];
    const page = await newPage(browser, errors);
    await page.goto(`http://127.0.0.1:${http.port}/`);
    const shown = async (): Promise<string> =>
      (await page.getByTestId('history-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-job')).join(','))) || '';
    await expect.poll(shown, { timeout: 20_000 }).toBe('100%_done,curl,hello');

    const box = page.getByTestId('history-find');
    for (const [typed, want] of [
      [String(ids.curl), 'curl'],
      [`#${ids.hello}`, 'hello'],
      [path('b', 'hello'), 'hello'],
      [`${path('d', 'curl')}/bin/curl`, 'curl'],
      ['c'.repeat(32), 'curl'],
      ['beta', '100%_done,curl'],
      ['nixpkgs:trunk:he', 'hello'],
      ['%', '100%_done'],
      ['_', '100%_done'],
    ] as const) {
      await box.fill(typed);
      await expect.poll(shown, { timeout: 10_000, message: typed }).toBe(want);
    }
    await box.fill('nothing-like-this');
    await expect.poll(() => page.getByTestId('history-empty').textContent(), { timeout: 10_000 }).toBe('no build matches');
    expect(await page.getByTestId('history-row').count()).toBe(0);
    // Too long: the server's refusal is shown where the list was.
    await box.fill('x'.repeat(SEARCH_MAX_LENGTH + 1));
    await expect.poll(() => page.getByTestId('history-error').textContent(), { timeout: 10_000 }).toContain(`at most ${SEARCH_MAX_LENGTH}`);
    // Typed a character at a time: one request out at a time (the server refuses a third search at
    // once), no refusal shown, and the list ends as the answer to the whole text.
    let out = 0;
    let most = 0;
    const isSearch = (r: { url(): string }): boolean => r.url().includes('/status/history?') && r.url().includes('q=');
    page.on('request', (r) => {
      if (isSearch(r)) most = Math.max(most, ++out);
    });
    page.on('requestfinished', (r) => {
      if (isSearch(r)) out--;
    });
    page.on('requestfailed', (r) => {
      if (isSearch(r)) out--;
    });
    await box.fill('');
    await box.pressSequentially('curl', { delay: 0 });
    await expect.poll(shown, { timeout: 10_000 }).toBe('curl');
    for (const word of ['nixpkgs:trunk:hello', 'beta', 'curl']) {
      await box.fill('');
      await box.pressSequentially(word, { delay: 10 });
    }
    await expect.poll(shown, { timeout: 10_000 }).toBe('curl');
    expect(most).toBe(1);
    expect(await page.getByTestId('history-error').count()).toBe(0);
    await page.screenshot({ path: resultPath('history-search.png') });
    await box.fill('');
    await expect.poll(shown, { timeout: 10_000 }).toBe('100%_done,curl,hello');
    // No page error; the console's failed loads are the runner-less server's 503s (no scheduler) and the 400 above.
    expect(errors.filter((e) => !/^Failed to load resource: the server responded with a status of (503|400)\b/.test(e))).toEqual([]);
  }, 60_000);
});
