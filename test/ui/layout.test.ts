import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { Lifecycle } from '../../src/daemon/lifecycle.ts';
import { HttpError } from '../../src/errors/index.ts';
import { Router } from '../../src/http/router.ts';
import { startHttpApi } from '../../src/http/server.ts';
import { registerViewerRoutes } from '../../src/http/viewer-routes.ts';
// The layout worker's computation, imported as the worker imports it (src/ui/layout-worker.js).
import { layersOf, layoutLayers, packDeps, unpackLayers } from '../../src/ui/layout.js';
import { quietLog } from '../helpers/runtime.ts';
import { layoutGraphs } from './layout-graphs.ts';

type Golden = Record<string, { layerOf: number[]; layers: number[][] }>;
const golden = JSON.parse(readFileSync(new URL('./fixtures/layout-golden.json', import.meta.url), 'utf8')) as Golden;

describe("the visualizer's layout, computed off the page's main thread", () => {
  it.each(layoutGraphs().map((g) => [g.name, g] as const))('lays out %s as the page did on its main thread', (name, g) => {
    const want = golden[name]!;
    expect(want).toBeDefined();
    const got = layersOf(g.deps, g.names);
    expect([...got.layerOf]).toEqual(want.layerOf);
    expect(got.layers).toEqual(want.layers);
    // Every step is in its own layer's list, once.
    expect(got.layers.flat().sort((a: number, b: number) => a - b)).toEqual(g.deps.map((_, i) => i));
  });

  it('packs the dependencies into typed arrays that keep their order, and unpacks layers', () => {
    const { start, list } = packDeps([[2, 1], [], [1]]);
    expect([...start]).toEqual([0, 2, 2, 3]);
    expect([...list]).toEqual([2, 1, 1]);
    const r = layoutLayers({ start, list, names: ['top', 'leaf', 'mid'] });
    expect(r.layerOf).toBeInstanceOf(Int32Array);
    expect([...r.layerOf]).toEqual([2, 0, 1]);
    expect(unpackLayers(r.order, r.sizes)).toEqual([[1], [2], [0]]);
  });

  it("serves comlink's ES module build and the worker's modules under /ui, and nothing else of node_modules", async () => {
    const lifecycle = new Lifecycle();
    const router = new Router(() => {
      throw new HttpError(403, 'read-only');
    });
    await registerViewerRoutes(router, { lifecycle, scheduler: () => null, startedAt: Date.now() });
    const http = await startHttpApi(router, '127.0.0.1:0', quietLog);
    try {
      const base = `http://127.0.0.1:${http.port}`;
      const comlink = await fetch(`${base}/ui/comlink.mjs`);
      expect(comlink.status).toBe(200);
      expect(comlink.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
      const file = createRequire(import.meta.url).resolve('comlink/dist/esm/comlink.mjs');
      expect(await comlink.text()).toBe(readFileSync(file, 'utf8'));
      for (const name of ['layout-worker.js', 'layout-client.js', 'layout.js']) {
        const r = await fetch(`${base}/ui/${name}`);
        expect(r.status).toBe(200);
        expect(r.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
        await r.arrayBuffer();
      }
      for (const path of ['comlink', 'comlink.js', 'comlink.mjs.map', '..%2F..%2Fpackage.json', '..%2F..%2Fnode_modules%2Fcomlink%2Fpackage.json']) {
        const r = await fetch(`${base}/ui/${path}`);
        expect(r.status, path).toBe(404);
        await r.arrayBuffer();
      }
    } finally {
      await http.close();
    }
  });
});
