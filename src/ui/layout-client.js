// The page's side of the layout worker (layout-worker.js, through comlink).
// Only the latest request counts: an answer to an older one is dropped, so a
// layout of a graph that has changed since is never drawn.

import * as Comlink from './comlink.mjs';
import { layoutLayers, packDeps, unpackLayers } from './layout.js';

export class LayoutClient {
  constructor(workerUrl = new URL('./layout-worker.js', import.meta.url)) {
    this.seq = 0;
    /** Layouts answered by the worker, and computed on the page (no worker). */
    this.byWorker = 0;
    this.onPage = 0;
    /** Answers dropped because a newer request had been made. */
    this.dropped = 0;
    this.remote = null;
    if (typeof Worker === 'undefined') return;
    try {
      const worker = new Worker(workerUrl, { type: 'module' });
      this.remote = Comlink.wrap(worker);
      // A worker whose module fails to load reports it only as an `error` event; comlink's call would wait forever.
      this.broken = new Promise((_, reject) => worker.addEventListener('error', (e) => reject(new Error(`layout worker: ${e.message ?? 'failed to start'}`))));
      this.broken.catch(() => {});
    } catch {
      this.remote = null;
    }
  }

  /** A newer layout is coming (or none is wanted): the answers in flight are dropped. */
  cancel() {
    this.seq++;
  }

  /**
   * Layers of the graph (`deps`: the dependencies of step i by index,
   * `names`: the steps' names): `{ layerOf, layers }`, or null when a newer
   * request (or cancel) came before the answer.
   */
  async layout(deps, names) {
    const seq = ++this.seq;
    let r = null;
    if (this.remote) {
      const { start, list } = packDeps(deps);
      try {
        r = await Promise.race([this.remote.layout(Comlink.transfer({ start, list, names }, [start.buffer, list.buffer])), this.broken]);
        this.byWorker++;
      } catch (err) {
        console.warn(`${err.message ?? err}; laying out on the page from now on`);
        this.remote = null;
      }
    }
    if (r === null) {
      if (seq !== this.seq) return this.drop();
      r = layoutLayers({ ...packDeps(deps), names });
      this.onPage++;
    }
    if (seq !== this.seq) return this.drop();
    return { layerOf: r.layerOf, layers: unpackLayers(r.order, r.sizes) };
  }

  drop() {
    this.dropped++;
    return null;
  }
}
