// The layout worker: a module Worker the page talks to through comlink
// (served at /ui/comlink.mjs), so laying out a 10k-step build takes no time
// on the page's main thread. The typed arrays travel both ways moved, not copied.

import * as Comlink from './comlink.mjs';
import { layoutLayers } from './layout.js';

Comlink.expose({
  layout(graph) {
    const r = layoutLayers(graph);
    return Comlink.transfer(r, [r.layerOf.buffer, r.order.buffer, r.sizes.buffer]);
  },
});
