// The layers of a build's step graph, pure (no DOM, no canvas): computed in
// the layout worker (layout-worker.js) so that a 10k-step build does not
// freeze the page, on the page itself only where there is no Worker, and by
// the tests in Node. Positions (which depend on the canvas width and the
// zoom) stay on the page: they are one cheap pass over the layers (dag.js).
//
// Layer of a step = the longest path from it down to a leaf (a step with no
// dependency in the build), computed in Kahn's order (no recursion: chains
// of thousands are fine). Inside a layer, steps are ordered by the mean
// position of their dependencies in the layer above (one sweep, fewer
// crossings), then by name, then by index.

/**
 * Dependencies (an array of index arrays) as two typed arrays, which a
 * postMessage moves instead of copying: the dependencies of step i are
 * `list[start[i] .. start[i + 1]]`, in their order (the mean below sums them in it).
 */
export function packDeps(deps) {
  const n = deps.length;
  const start = new Int32Array(n + 1);
  for (let i = 0; i < n; i++) start[i + 1] = start[i] + deps[i].length;
  const list = new Int32Array(start[n]);
  for (let i = 0; i < n; i++) list.set(deps[i], start[i]);
  return { start, list };
}

const byName = (names) => (a, b) => (names[a] < names[b] ? -1 : names[a] > names[b] ? 1 : a - b);

/**
 * `{ start, list }` (packDeps) and the steps' names → `layerOf` (a step's
 * layer), and the steps in drawing order: `order`, layer after layer, layer l
 * holding `sizes[l]` steps. Typed arrays, so the worker can move them back.
 */
export function layoutLayers({ start, list, names }) {
  const n = names.length;
  // Dependents, in index order.
  const rstart = new Int32Array(n + 1);
  for (let e = 0; e < start[n]; e++) rstart[list[e] + 1]++;
  for (let i = 0; i < n; i++) rstart[i + 1] += rstart[i];
  const rlist = new Int32Array(start[n]);
  const fill = rstart.slice(0, n);
  for (let i = 0; i < n; i++) for (let e = start[i]; e < start[i + 1]; e++) rlist[fill[list[e]]++] = i;

  const layer = new Int32Array(n);
  const waiting = new Int32Array(n);
  const queue = new Int32Array(n);
  let tail = 0;
  for (let i = 0; i < n; i++) {
    waiting[i] = start[i + 1] - start[i];
    if (waiting[i] === 0) queue[tail++] = i;
  }
  for (let q = 0; q < tail; q++) {
    const i = queue[q];
    for (let e = rstart[i]; e < rstart[i + 1]; e++) {
      const r = rlist[e];
      if (layer[i] + 1 > layer[r]) layer[r] = layer[i] + 1;
      if (--waiting[r] === 0) queue[tail++] = r;
    }
  }
  // A cycle cannot occur between derivations; if the data had one, its steps stay in layer 0.
  let depth = 0;
  for (let i = 0; i < n; i++) if (layer[i] > depth) depth = layer[i];
  const layers = Array.from({ length: n > 0 ? depth + 1 : 0 }, () => []);
  for (let i = 0; i < n; i++) layers[layer[i]].push(i);

  const pos = new Float64Array(n);
  const tie = byName(names);
  for (let l = 0; l < layers.length; l++) {
    const lst = layers[l];
    if (l === 0) lst.sort(tie);
    else {
      const key = new Float64Array(lst.length);
      const order = lst.map((i, k) => {
        let sum = 0;
        for (let e = start[i]; e < start[i + 1]; e++) sum += pos[list[e]];
        key[k] = start[i + 1] > start[i] ? sum / (start[i + 1] - start[i]) : 0.5;
        return k;
      });
      // Steps of a layer are listed in index order, so comparing k compares indices.
      order.sort((a, b) => key[a] - key[b] || (names[lst[a]] < names[lst[b]] ? -1 : names[lst[a]] > names[lst[b]] ? 1 : a - b));
      layers[l] = order.map((k) => lst[k]);
    }
    const m = layers[l].length;
    layers[l].forEach((i, k) => (pos[i] = m > 1 ? k / (m - 1) : 0.5));
  }

  const order = new Int32Array(n);
  const sizes = new Int32Array(layers.length);
  let o = 0;
  layers.forEach((lst, l) => {
    sizes[l] = lst.length;
    order.set(lst, o);
    o += lst.length;
  });
  return { layerOf: layer, order, sizes };
}

/** `order` and `sizes` back into one array of steps per layer. */
export function unpackLayers(order, sizes) {
  const layers = new Array(sizes.length);
  let o = 0;
  for (let l = 0; l < sizes.length; l++) {
    layers[l] = Array.from(order.subarray(o, o + sizes[l]));
    o += sizes[l];
  }
  return layers;
}

/** The whole computation in one call, on the calling thread: `{ layerOf, layers }`. */
export function layersOf(deps, names) {
  const r = layoutLayers({ ...packDeps(deps), names });
  return { layerOf: r.layerOf, layers: unpackLayers(r.order, r.sizes) };
}
