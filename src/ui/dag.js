// The step graph of one build, laid out in layers and drawn on a <canvas>.
//
// Layers (layout.js) are computed in a Web Worker (layout-client.js), off the
// page's main thread; the page draws the latest layout that arrived. Leaves
// are layer 0 at the top, the build's own step is in the last layer at the
// bottom. A layer wraps into rows as wide as the canvas, so a layer of 5,000
// steps is a block of small squares rather than a line 50,000 pixels long.
// Until a graph's first layout arrives, nothing of it is drawn; steps added
// since the last layout are drawn with the next one.
//
// Built for 10k-step builds: positions live in typed arrays, only the rows in
// view are drawn (one fillRect per step, grouped by colour), edges are drawn
// only while there are few of them (otherwise only the selected step's), and
// a redraw is one animation frame however many events arrive.

export const STEP_STATES = ['queued', 'runnable', 'dispatched', 'building', 'retryWait', 'succeeded', 'failed', 'failedWithOutput', 'resolved', 'cancelled'];

export const STEP_COLORS = {
  queued: '#a0aec0',
  runnable: '#ecc94b',
  dispatched: '#ed8936',
  building: '#3182ce',
  retryWait: '#d53f8c',
  succeeded: '#38a169',
  failed: '#e53e3e',
  failedWithOutput: '#9b2c2c',
  resolved: '#805ad5',
  cancelled: '#4a5568',
};
import { LayoutClient } from './layout-client.js';

const UNKNOWN_COLOR = '#718096';

/** Above these, only the selected step's edges are drawn. */
export const MAX_EDGES_DRAWN = 3000;
const MAX_NODES_WITH_EDGES = 1500;
/** Of the selected step's dependencies and dependents, at most this many are drawn (those in view). */
const MAX_SELECTED_EDGES = 300;

const GUTTER = 34;
const MARGIN = 10;

/** `/nix/store/<hash>-name.drv` → `name`. */
export function drvName(drvPath) {
  if (!drvPath) return '?';
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1);
  const dash = base.indexOf('-');
  return (dash === 32 ? base.slice(33) : base).replace(/\.drv$/, '');
}

/** Node geometry for a graph of `n` steps, before zoom. */
function baseGeometry(n) {
  if (n <= 150) return { nw: 150, nh: 28, gx: 14, gy: 10, lg: 34 };
  if (n <= 1500) return { nw: 26, nh: 14, gx: 4, gy: 4, lg: 16 };
  return { nw: 7, nh: 7, gx: 2, gy: 2, lg: 12 };
}

export class DagView {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{ onSelect?: (id: number, at: number) => void, onHover?: (id: number|null, x: number, y: number) => void, onDraw?: () => void }} hooks
   */
  constructor(canvas, hooks = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.hooks = hooks;
    this.layoutClient = new LayoutClient();
    /** Layouts applied (each one drawn). */
    this.layouts = 0;
    this.clear();
    this.zoom = 1;
    this.scrollY = 0;
    this.width = 0;
    this.height = 0;
    this.drawPending = false;
    this.frames = 0;
    this.lastDrawMs = 0;
    this.maxDrawMs = 0;
    this.installInput();
  }

  /** Forgets every step (another build). */
  clear() {
    this.ids = [];
    this.index = new Map();
    this.byDrv = new Map();
    this.names = [];
    this.drvPaths = [];
    this.states = [];
    this.depIds = [];
    this.deps = [];
    this.rdeps = [];
    this.edgeCount = 0;
    this.counts = Object.create(null);
    this.layerOf = new Int32Array(0);
    this.layers = [];
    this.x = new Float64Array(0);
    this.y = new Float64Array(0);
    this.layerTop = [];
    this.layerHeight = [];
    this.layerCols = [];
    this.layerX0 = [];
    this.layerWidth = [];
    this.contentHeight = 0;
    this.selected = -1;
    this.scrollY = 0;
    /** Steps the current layout holds: indices below it (steps only ever get appended). */
    this.laid = 0;
    this.revealAfterLayout = null;
    /** The graph changed: layers to compute (in the worker). The width or zoom changed: positions to compute. */
    this.needsLayers = true;
    this.needsPlace = true;
    this.layoutPending = false;
    this.layoutClient?.cancel();
  }

  /** Whether the steps shown are laid out (no layout in flight for a changed graph). */
  get laidOut() {
    return !this.needsLayers && !this.layoutPending;
  }

  get size() {
    return this.ids.length;
  }

  has(id) {
    return this.index.has(id);
  }

  stateOf(id) {
    const i = this.index.get(id);
    return i === undefined ? undefined : this.states[i];
  }

  nameOf(id) {
    const i = this.index.get(id);
    return i === undefined ? undefined : this.names[i];
  }

  idOfDrv(drvPath) {
    return this.byDrv.get(drvPath);
  }

  depsOf(id) {
    const i = this.index.get(id);
    return i === undefined ? [] : this.deps[i].map((d) => this.ids[d]);
  }

  rdepsOf(id) {
    const i = this.index.get(id);
    return i === undefined ? [] : this.rdeps[i].map((d) => this.ids[d]);
  }

  /**
   * Adds or updates steps (the `steps` of GET /status/build/ID). Steps the
   * list lacks keep their last known state: a finished step leaves the
   * runner's graph, and the view keeps showing it. `fresh`: a new build.
   */
  setSteps(steps, fresh) {
    if (fresh) this.clear();
    let added = false;
    for (const s of steps) {
      let i = this.index.get(s.id);
      if (i === undefined) {
        i = this.ids.length;
        this.index.set(s.id, i);
        this.ids.push(s.id);
        this.names.push(drvName(s.drvPath));
        this.drvPaths.push(s.drvPath);
        this.byDrv.set(s.drvPath, s.id);
        this.states.push(s.state);
        this.counts[s.state] = (this.counts[s.state] ?? 0) + 1;
        this.depIds.push(s.deps ?? []);
        added = true;
      } else {
        this.setStateAt(i, s.state);
        // Dependencies only grow in the view (a finished dependency leaves the runner's list).
        const known = new Set(this.depIds[i]);
        const more = (s.deps ?? []).filter((d) => !known.has(d));
        if (more.length > 0) {
          this.depIds[i] = [...this.depIds[i], ...more];
          added = true;
        }
      }
    }
    if (added || fresh) {
      this.linkEdges();
      // A layout in flight is of the old graph: dropped when it arrives.
      this.layoutClient.cancel();
      this.layoutPending = false;
      this.needsLayers = true;
      // Meanwhile the last layout stays drawn, placed for the new size (the geometry follows the step count).
      this.needsPlace = true;
    }
    this.requestDraw();
  }

  linkEdges() {
    const n = this.ids.length;
    this.deps = new Array(n);
    this.rdeps = new Array(n);
    for (let i = 0; i < n; i++) this.rdeps[i] = [];
    let edges = 0;
    for (let i = 0; i < n; i++) {
      const list = [];
      for (const d of this.depIds[i]) {
        const j = this.index.get(d);
        if (j === undefined || j === i) continue;
        list.push(j);
        this.rdeps[j].push(i);
      }
      this.deps[i] = list;
      edges += list.length;
    }
    this.edgeCount = edges;
  }

  /** Sets a step's state; false for a step the view does not hold. */
  setState(id, state) {
    const i = this.index.get(id);
    if (i === undefined) return false;
    this.setStateAt(i, state);
    this.requestDraw();
    return true;
  }

  setStateAt(i, state) {
    const old = this.states[i];
    if (old === state) return;
    this.counts[old]--;
    this.counts[state] = (this.counts[state] ?? 0) + 1;
    this.states[i] = state;
  }

  select(id, reveal = false) {
    const i = id === null || id === undefined ? -1 : (this.index.get(id) ?? -1);
    this.selected = i;
    if (reveal && i >= 0) this.reveal(id);
    this.requestDraw();
  }

  get selectedId() {
    return this.selected >= 0 ? this.ids[this.selected] : null;
  }

  /** Scrolls so that step `id` is in view. */
  reveal(id) {
    this.ensureLayout();
    const i = this.index.get(id);
    if (i === undefined) return;
    if (i >= this.laid || !this.laidOut) {
      this.revealAfterLayout = id;
      return;
    }
    const { nh } = this.geometry();
    if (this.y[i] < this.scrollY + MARGIN || this.y[i] + nh > this.scrollY + this.height - MARGIN) {
      this.scrollTo(this.y[i] - this.height / 2);
    }
  }

  scrollTo(y) {
    this.scrollY = Math.max(0, Math.min(y, this.contentHeight - this.height));
    this.requestDraw();
  }

  setZoom(z) {
    this.zoom = Math.max(0.25, Math.min(8, z));
    this.needsPlace = true;
    this.requestDraw();
  }

  geometry() {
    const b = baseGeometry(this.ids.length);
    const z = this.zoom;
    return { nw: b.nw * z, nh: b.nh * z, gx: b.gx * z, gy: b.gy * z, lg: b.lg * z };
  }

  /** Asks the worker for the layers of the graph as it is now; the answer is drawn if no newer graph came meanwhile. */
  startLayout() {
    this.needsLayers = false;
    const n = this.ids.length;
    if (n === 0) {
      this.applyLayout({ layerOf: new Int32Array(0), layers: [] }, 0);
      return;
    }
    this.layoutPending = true;
    void this.layoutClient.layout(this.deps, this.names).then((r) => {
      if (r === null) return;
      this.layoutPending = false;
      this.applyLayout(r, n);
      this.requestDraw();
    });
  }

  applyLayout(r, n) {
    this.layerOf = r.layerOf;
    this.layers = r.layers;
    this.laid = n;
    this.layouts++;
    this.place();
    if (this.revealAfterLayout !== null) {
      const id = this.revealAfterLayout;
      this.revealAfterLayout = null;
      this.reveal(id);
    }
  }

  /** Whether every edge is drawn (few steps and edges); otherwise only the selected step's. */
  get drawsAllEdges() {
    return this.edgeCount <= MAX_EDGES_DRAWN && this.ids.length <= MAX_NODES_WITH_EDGES;
  }

  /**
   * Positions for the current width and zoom. While every edge is drawn,
   * each layer is a band of its own, centred. Otherwise layers are packed
   * like words on a line: a layer that fits in one row follows the previous
   * one in the same band (long chains of one-step layers would otherwise
   * take a row each), a wider one wraps over full rows of its own.
   */
  place() {
    const { nw, nh, gx, gy, lg } = this.geometry();
    const n = this.ids.length;
    this.x = new Float64Array(n);
    this.y = new Float64Array(n);
    const packed = !this.drawsAllEdges;
    const colW = nw + gx;
    const rowH = nh + gy;
    const avail = Math.max(nw, this.width - GUTTER - MARGIN);
    const cols = Math.max(1, Math.floor((avail + gx) / colW));
    const sep = Math.max(3 * gx, 6);
    let top = MARGIN;
    // The open band (packed mode): its top, the x where the next layer goes, its height.
    let bandTop = top;
    let bandX = 0;
    let bandH = 0;
    this.layerTop = [];
    this.layerHeight = [];
    this.layerCols = [];
    this.layerX0 = [];
    this.layerWidth = [];
    for (const list of this.layers) {
      const used = Math.min(list.length, cols);
      const rows = Math.ceil(list.length / cols);
      const w = used * colW - gx;
      const h = rows * rowH - gy;
      let x0;
      let y0;
      if (!packed) {
        x0 = GUTTER + Math.max(0, (avail - w) / 2);
        y0 = top;
        top += h + lg;
      } else if (rows === 1 && bandX > 0 && bandX + w <= avail) {
        x0 = GUTTER + bandX;
        y0 = bandTop;
        bandX += w + sep;
        bandH = Math.max(bandH, h);
      } else {
        if (bandX > 0) top = bandTop + bandH + lg;
        x0 = GUTTER;
        y0 = bandTop = top;
        if (rows === 1) {
          bandX = w + sep;
          bandH = h;
        } else {
          top += h + lg;
          bandX = 0;
          bandH = 0;
        }
      }
      list.forEach((i, k) => {
        this.x[i] = x0 + (k % cols) * colW;
        this.y[i] = y0 + Math.floor(k / cols) * rowH;
      });
      this.layerTop.push(y0);
      this.layerHeight.push(h);
      this.layerCols.push(cols);
      this.layerX0.push(x0);
      this.layerWidth.push(w);
    }
    if (bandX > 0) top = bandTop + bandH + lg;
    this.contentHeight = top + MARGIN;
    this.needsPlace = false;
    this.scrollY = Math.max(0, Math.min(this.scrollY, this.contentHeight - this.height));
  }

  ensureLayout() {
    this.resize();
    if (this.needsLayers) this.startLayout();
    if (this.needsPlace) this.place();
  }

  resize() {
    const w = Math.max(1, this.canvas.clientWidth);
    const h = Math.max(1, this.canvas.clientHeight);
    const dpr = window.devicePixelRatio || 1;
    if (w !== this.width || h !== this.height || this.canvas.width !== Math.round(w * dpr)) {
      if (w !== this.width) this.needsPlace = true;
      this.width = w;
      this.height = h;
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
  }

  requestDraw() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.draw();
    });
  }

  /** The first layer whose bottom is at or below `y`. */
  firstLayerFrom(y) {
    let lo = 0;
    let hi = this.layers.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.layerTop[mid] + this.layerHeight[mid] < y) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  draw() {
    const t0 = performance.now();
    this.ensureLayout();
    const ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, this.width, this.height);
    if (this.laid === 0) {
      this.frames++;
      this.lastDrawMs = performance.now() - t0;
      this.hooks.onDraw?.();
      return;
    }
    const g = this.geometry();
    const top = this.scrollY;
    const bottom = top + this.height;
    ctx.translate(0, -top);

    // Visible steps, grouped by state so each colour is set once.
    const buckets = new Map();
    const visible = [];
    for (let l = this.firstLayerFrom(top); l < this.layers.length && this.layerTop[l] <= bottom; l++) {
      const list = this.layers[l];
      const cols = this.layerCols[l];
      const rowH = g.nh + g.gy;
      const firstRow = Math.max(0, Math.floor((top - this.layerTop[l]) / rowH));
      const lastRow = Math.floor((bottom - this.layerTop[l]) / rowH);
      for (let k = firstRow * cols; k < list.length && k < (lastRow + 1) * cols; k++) {
        const i = list[k];
        visible.push(i);
        const s = this.states[i];
        let b = buckets.get(s);
        if (!b) buckets.set(s, (b = []));
        b.push(i);
      }
      // Layer number in the gutter (the first layer of a band).
      if (l === 0 || this.layerTop[l] !== this.layerTop[l - 1]) {
        ctx.fillStyle = '#a0aec0';
        ctx.font = '10px system-ui, sans-serif';
        ctx.textBaseline = 'top';
        ctx.fillText(String(l), 4, this.layerTop[l]);
      }
    }

    // Edges: all of them while few, else only the selected step's.
    if (this.drawsAllEdges) {
      ctx.strokeStyle = 'rgba(113, 128, 150, 0.35)';
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 0; i < this.laid; i++) {
        for (const d of this.deps[i]) {
          if (d >= this.laid) continue;
          const y1 = this.y[d] + g.nh;
          const y2 = this.y[i];
          if ((y1 < top && y2 < top) || (y1 > bottom && y2 > bottom)) continue;
          this.edgePath(ctx, d, i, g);
        }
      }
      ctx.stroke();
    }
    if (this.selected >= 0 && this.selected < this.laid) {
      // The selected step's edges whose other end is in view, a bounded number: a step every
      // package needs has thousands, and stroking them all each frame would stall the page.
      const s = this.selected;
      const inView = (j) => this.y[j] + g.nh >= top && this.y[j] <= bottom;
      ctx.lineWidth = 1.5;
      for (const [list, color, up] of [[this.deps[s], '#2b6cb0', true], [this.rdeps[s], '#dd6b20', false]]) {
        ctx.strokeStyle = color;
        ctx.beginPath();
        let drawn = 0;
        for (const j of list) {
          if (drawn >= MAX_SELECTED_EDGES) break;
          if (j >= this.laid || !inView(j)) continue;
          if (up) this.edgePath(ctx, j, s, g);
          else this.edgePath(ctx, s, j, g);
          drawn++;
        }
        ctx.stroke();
      }
    }

    for (const [state, list] of buckets) {
      ctx.fillStyle = STEP_COLORS[state] ?? UNKNOWN_COLOR;
      for (const i of list) ctx.fillRect(this.x[i], this.y[i], g.nw, g.nh);
    }

    if (g.nw >= 60 && g.nh >= 14) {
      // Labels: the derivation's name inside its box.
      ctx.font = `${Math.min(12, Math.round(g.nh * 0.45))}px system-ui, sans-serif`;
      ctx.textBaseline = 'middle';
      for (const i of visible) {
        const dark = this.states[i] !== 'runnable' && this.states[i] !== 'queued' && this.states[i] !== 'dispatched';
        ctx.fillStyle = dark ? '#ffffff' : '#1a202c';
        ctx.save();
        ctx.beginPath();
        ctx.rect(this.x[i] + 4, this.y[i], g.nw - 8, g.nh);
        ctx.clip();
        ctx.fillText(this.names[i], this.x[i] + 6, this.y[i] + g.nh / 2);
        ctx.restore();
      }
    }

    if (this.selected >= 0 && this.selected < this.laid) {
      const s = this.selected;
      ctx.lineWidth = Math.min(3, Math.max(2, g.nw / 8));
      ctx.strokeStyle = '#1a202c';
      const pad = Math.max(1.5, ctx.lineWidth / 2);
      ctx.strokeRect(this.x[s] - pad, this.y[s] - pad, g.nw + 2 * pad, g.nh + 2 * pad);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);

    // Scroll bar.
    if (this.contentHeight > this.height) {
      const h = Math.max(20, (this.height * this.height) / this.contentHeight);
      const y = (this.scrollY / (this.contentHeight - this.height)) * (this.height - h);
      ctx.fillStyle = 'rgba(74, 85, 104, 0.35)';
      ctx.fillRect(this.width - 6, y, 4, h);
    }
    this.frames++;
    this.lastDrawMs = performance.now() - t0;
    this.maxDrawMs = Math.max(this.maxDrawMs, this.lastDrawMs);
    this.hooks.onDraw?.();
  }

  edgePath(ctx, from, to, g) {
    const x1 = this.x[from] + g.nw / 2;
    const y1 = this.y[from] + g.nh;
    const x2 = this.x[to] + g.nw / 2;
    const y2 = this.y[to];
    ctx.moveTo(x1, y1);
    if (g.nw >= 60) {
      const dy = Math.max(12, (y2 - y1) / 2);
      ctx.bezierCurveTo(x1, y1 + dy, x2, y2 - dy, x2, y2);
    } else ctx.lineTo(x2, y2);
  }

  /** The step at canvas point (px, py), or null. */
  hit(px, py) {
    if (this.laid === 0) return null;
    const g = this.geometry();
    const cy = py + this.scrollY;
    const rowH = g.nh + g.gy;
    const colW = g.nw + g.gx;
    // Layers sharing a band have one top; look at each whose box holds the point.
    for (let l = this.firstLayerFrom(cy); l < this.layers.length && this.layerTop[l] <= cy; l++) {
      const dx = px - this.layerX0[l];
      if (dx < 0 || dx > this.layerWidth[l]) continue;
      const row = Math.floor((cy - this.layerTop[l]) / rowH);
      const col = Math.floor(dx / colW);
      if (cy - this.layerTop[l] - row * rowH > g.nh || dx - col * colW > g.nw) return null;
      const i = this.layers[l][row * this.layerCols[l] + col];
      return i === undefined ? null : this.ids[i];
    }
    return null;
  }

  /** The layer of step `id` (0: no dependency in the build). */
  layerOfId(id) {
    const i = this.index.get(id);
    return i === undefined || i >= this.laid ? undefined : this.layerOf[i];
  }

  /** Centre of step `id` in canvas coordinates (after revealing it), for tests and links. */
  centerOf(id) {
    this.reveal(id);
    const i = this.index.get(id);
    if (i === undefined || i >= this.laid) return null;
    const g = this.geometry();
    return { x: this.x[i] + g.nw / 2, y: this.y[i] - this.scrollY + g.nh / 2 };
  }

  installInput() {
    const c = this.canvas;
    c.addEventListener(
      'wheel',
      (e) => {
        e.preventDefault();
        if (e.ctrlKey) this.setZoom(this.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2));
        else this.scrollTo(this.scrollY + e.deltaY);
      },
      { passive: false },
    );
    let drag = null;
    c.addEventListener('pointerdown', (e) => {
      drag = { y: e.clientY, scroll: this.scrollY, moved: false };
    });
    c.addEventListener('pointermove', (e) => {
      const r = c.getBoundingClientRect();
      if (drag && e.buttons === 1) {
        if (Math.abs(e.clientY - drag.y) > 3) drag.moved = true;
        if (drag.moved) this.scrollTo(drag.scroll - (e.clientY - drag.y));
      }
      const id = this.hit(e.clientX - r.left, e.clientY - r.top);
      c.style.cursor = id === null ? (drag?.moved ? 'grabbing' : 'default') : 'pointer';
      this.hooks.onHover?.(id, e.clientX - r.left, e.clientY - r.top);
    });
    c.addEventListener('pointerleave', () => this.hooks.onHover?.(null, 0, 0));
    c.addEventListener('pointerup', (e) => {
      const t0 = performance.now();
      const moved = drag?.moved;
      drag = null;
      if (moved) return;
      const r = c.getBoundingClientRect();
      const id = this.hit(e.clientX - r.left, e.clientY - r.top);
      if (id !== null) {
        this.select(id);
        this.hooks.onSelect?.(id, t0);
      }
    });
    new ResizeObserver(() => this.requestDraw()).observe(c);
  }
}
