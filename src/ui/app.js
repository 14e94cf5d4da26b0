// Hydrant's visualizer: machines, queues, a build's step graph and the
// lifecycles, live. Plain ES modules served by the runner (src/ui), no
// framework and nothing from the network but the runner's own API:
//
//   GET /status, /status/machines, /status/queues, /status/queues/jobs, /status/builds
//   GET /status/build/ID   a build's steps (re-read on `resync`); a build that is not queued
//                          comes from the database (`source: 'database'`, steps = its rows)
//   GET /status/step/ID/log, /status/build/ID/step/NR/log   a step's log (its tail, then from an offset while it runs)
//   GET /status/history   recent builds, finished or not (the Builds panel)
//   GET /status/step/ID    one step, with the history of its transitions
//   GET /ui/machines.json  the XState definitions as graphs
//   GET /events?build=ID   server-sent `steps`, `machines` and `resync` events

import { DagView, STEP_COLORS, STEP_STATES, drvName } from './dag.js';
import { BUILDER_COLORS, renderDiagram } from './diagram.js';

const $ = (id) => document.getElementById(id);
const QUEUE_POLL_MS = 2000;
const BUILDS_POLL_MS = 3000;
const MACHINES_POLL_MS = 5000;

const app = {
  buildId: null,
  stepId: null,
  /** `at` of the latest event seen for the selected step. */
  stepEventAt: 0,
  treeLoaded: false,
  buildGone: false,
  treeGen: 0,
  /** Events received while the build is being (re-)read: applied after it, if newer. */
  buffered: null,
  source: null,
  machines: new Map(),
  diagrams: null,
  detail: null,
  builds: [],
  buildsKey: '',
  events: 0,
  firstRenderMs: null,
  timings: {},
  /** A finished build's step rows by stepnr (its tree came from the database), else null. */
  rows: null,
  /** The log panel: the step it shows, its refresh timer while the step runs, and where the text shown ends. */
  log: { stepId: null, timer: null, end: 0 },
  /** The Builds panel: recent builds from /status/history, and its filter. */
  history: { builds: [], key: '', find: '', status: '', inFlight: false, again: false, typing: 0 },
};

/** Element helper: h('div', { class: 'x', dataset: { testid: 'y' } }, 'text', child). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

class HttpFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) {
    let msg = `${r.status}`;
    try {
      msg = (await r.json()).error ?? msg;
    } catch {
      /* not JSON */
    }
    throw new HttpFailure(r.status, msg);
  }
  return r.json();
}

const pad2 = (n) => String(n).padStart(2, '0');
function clock(ms) {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}
/** Hydra's Unix seconds → a short local time; 0 → ''. */
const secClock = (s) => (s > 0 ? clock(s * 1000).slice(0, 8) : '');
function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}
const badge = (state, colors, testid) =>
  h('span', { class: 'badge', style: `background:${colors[state] ?? '#718096'}`, dataset: testid ? { testid } : undefined }, state);

/** A build's outcome in the Builds panel: its status name once finished, else its step's state here. */
const OUTCOME_COLORS = { success: '#38a169', failed: '#e53e3e', depFailed: '#dd6b20', timedOut: '#c53030', aborted: '#a0aec0', cancelled: '#a0aec0', failedWithOutput: '#d69e2e', queued: '#4299e1', building: '#3182ce' };
const outcomeOf = (b) => (b.finished ? `${b.statusName}${b.isCachedBuild ? ' (cached)' : ''}` : (b.state ?? 'queued'));

/** Why a step waits (Dispatcher.waitingReason), in a few words. */
export function describeWaiting(w) {
  if (!w) return '';
  const until = (ms) => (ms > Date.now() ? `in ${duration(ms - Date.now())}` : 'now');
  switch (w.kind) {
    case 'retryDelay':
      return `retry ${until(w.until)} (after try ${w.tries})`;
    case 'noMachine':
      return `no machine for ${w.system}${w.features.length ? ` with ${w.features.join(', ')}` : ''}${w.failsAt ? `; fails ${until(w.failsAt)}` : ''}`;
    case 'machinesDisabled':
      return `machines disabled (${w.machines.join(', ')}) until ${clock(w.until).slice(0, 8)}`;
    case 'machinesUnavailable':
      return `machines unavailable: ${w.machines.map((m) => `${m.id} ${m.state}`).join(', ')}`;
    case 'machinesFull':
      return `machines full: ${w.machines.join(', ')}`;
    case 'queued':
      return `${w.ahead} ahead; room on ${w.machinesWithRoom.join(', ')}`;
    default:
      return w.kind;
  }
}

// ---------------------------------------------------------------- the graph

const dag = new DagView($('dag'), {
  onSelect: (id, at) => selectStep(id, false, at),
  onHover: showTip,
  onDraw: afterDraw,
});

let hovered = null;
function showTip(id, x, y) {
  const tip = $('dag-tip');
  hovered = id;
  if (id === null) {
    tip.hidden = true;
    return;
  }
  tip.textContent = tipText(id);
  tip.hidden = false;
  // Right of the pointer, or left of it where the canvas ends.
  const w = tip.offsetWidth;
  tip.style.left = `${x + 14 + w > $('dag').clientWidth ? Math.max(0, x - 10 - w) : x + 14}px`;
  tip.style.top = `${y + 14}px`;
}

const tipText = (id) => `${dag.nameOf(id)} — ${dag.stateOf(id)} (step ${id}, layer ${dag.layerOfId(id)})`;

/** After each frame: the DOM figures follow what the canvas shows. */
function afterDraw() {
  if (hovered !== null) $('dag-tip').textContent = tipText(hovered);
  // Steps drawn: those of the latest layout (the worker's answer comes after the steps).
  if (app.firstRenderMs === null && dag.laid > 0) {
    app.firstRenderMs = performance.now();
    $('dag').dataset.firstRenderMs = String(Math.round(app.firstRenderMs));
  }
  $('dag').dataset.steps = String(dag.laid);
  $('dag').dataset.layout = dag.laidOut ? 'done' : 'pending';
  $('dag').dataset.frames = String(dag.frames);
  renderLegend();
  if (app.stepId !== null) {
    const state = dag.stateOf(app.stepId) ?? app.detail?.state;
    const el = $('step-state');
    if (el && state && el.textContent !== state) {
      el.textContent = state;
      el.style.background = STEP_COLORS[state] ?? '#718096';
      renderStepDiagram();
    }
  }
}

function renderLegend() {
  const legend = $('legend');
  if (!legend.firstChild) {
    for (const s of STEP_STATES) {
      legend.append(
        h('span', { class: 'legend-item', title: s }, h('i', { style: `background:${STEP_COLORS[s]}` }), s, ' ', h('b', { dataset: { testid: `count-${s}` } }, '0')),
      );
    }
  }
  for (const s of STEP_STATES) {
    const el = legend.querySelector(`[data-testid="count-${s}"]`);
    const n = String(dag.counts[s] ?? 0);
    if (el.textContent !== n) el.textContent = n;
    el.parentElement.classList.toggle('zero', n === '0');
  }
  const edges = dag.drawsAllEdges ? '' : ` · ${dag.edgeCount} edges: only the selected step's are drawn; short layers share a row`;
  $('dag-note').textContent = dag.size === 0 ? '' : dag.laid === 0 ? `${dag.size} steps: laying out…` : `${dag.size} steps in ${dag.layers.length} layers (leaves on top)${edges}`;
}

// ---------------------------------------------------------------- builds and the feed

function updateUrl() {
  const p = new URLSearchParams(location.search);
  if (app.buildId === null) p.delete('build');
  else p.set('build', String(app.buildId));
  if (app.stepId === null) p.delete('step');
  else p.set('step', String(app.stepId));
  const q = p.toString();
  history.replaceState(null, '', `${location.pathname}${q ? `?${q}` : ''}`);
}

function selectBuild(id, stepId = null) {
  app.buildId = id;
  app.stepId = stepId;
  app.treeLoaded = false;
  app.buildGone = false;
  app.detail = null;
  app.rows = null;
  closeLog();
  app.treeGen++;
  dag.clear();
  dag.requestDraw();
  updateUrl();
  renderBuildSelect();
  app.history.key = '';
  renderHistory();
  renderStepDetails();
  setBuildInfo(`loading build ${id}…`);
  openFeed(id);
}

function setFeed(state, text) {
  const el = $('feed-status');
  el.className = `feed ${state}`;
  el.textContent = text;
  el.dataset.state = state;
}

function openFeed(buildId) {
  app.source?.close();
  const src = new EventSource(buildId === null ? '/events' : `/events?build=${buildId}`);
  app.source = src;
  let opened = false;
  src.addEventListener('open', () => {
    if (src !== app.source) return;
    setFeed('live', buildId === null ? 'live (machines)' : 'live');
    // Subscribed before the read: nothing between the two is missed (and after a reconnect, re-read).
    if (buildId !== null) void loadTree();
    if (opened) void refreshMachines();
    opened = true;
  });
  src.addEventListener('error', () => {
    if (src !== app.source) return;
    if (src.readyState === EventSource.CLOSED) {
      setFeed('off', 'offline');
      // Refused (the build is not queued, or the runner is not running): machine events only, later.
      if (buildId !== null) void loadTree();
      setTimeout(() => {
        if (src === app.source) openFeed(null);
      }, buildId !== null ? 0 : 3000);
    } else setFeed('reconnecting', 'reconnecting…');
  });
  src.addEventListener('steps', (e) => {
    if (src !== app.source) return;
    onSteps(JSON.parse(e.data));
  });
  src.addEventListener('machines', (e) => {
    if (src !== app.source) return;
    onMachines(JSON.parse(e.data));
  });
  src.addEventListener('resync', () => {
    if (src !== app.source) return;
    void loadTree();
  });
}

/** A function that runs `fn` `ms` after its first call; calls until then join that run. */
function coalesced(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      void fn();
    }, ms);
  };
}

const scheduleResync = coalesced(() => loadTree(), 1000);
function onSteps(list) {
  app.events += list.length;
  $('feed-events').textContent = `${app.events} step events`;
  if (app.buffered) {
    for (const e of list) app.buffered.push(e);
    return;
  }
  let unknown = 0;
  let selectedChanged = false;
  for (const e of list) {
    if (!dag.setState(e.id, e.state)) unknown++;
    if (e.id === app.stepId) {
      selectedChanged = true;
      app.stepEventAt = Math.max(app.stepEventAt, e.at);
    }
  }
  if (selectedChanged) scheduleStepReload();
  // A step the view lacks (a cut tree): read the build again, at most once a second.
  if (unknown > 0) scheduleResync();
}

/** Reads the build's steps; events that arrived meanwhile are applied if they are newer than the read. */
async function loadTree() {
  const id = app.buildId;
  if (id === null) return;
  const gen = ++app.treeGen;
  app.buffered = [];
  const t0 = performance.now();
  let tree;
  try {
    tree = await api(`/status/build/${id}`);
  } catch (err) {
    if (gen !== app.treeGen) return;
    const buffered = app.buffered;
    app.buffered = null;
    for (const e of buffered) dag.setState(e.id, e.state);
    if (err.status === 404) {
      app.buildGone = true;
      setBuildInfo(app.treeLoaded ? `build ${id} has ended (no longer queued): the last states seen are shown` : `build ${id}: ${err.message}`);
    } else setBuildInfo(`build ${id}: ${err.message}`);
    return;
  }
  if (gen !== app.treeGen) return;
  const t1 = performance.now();
  const fresh = !app.treeLoaded;
  app.rows = tree.source === 'database' ? new Map(tree.steps.map((st) => [st.id, st])) : null;
  // A resolved step links to the step built instead (an edge from it).
  dag.setSteps(tree.steps.map((st) => (st.resolvedTo != null ? { ...st, deps: [...(st.deps ?? []), st.resolvedTo] } : st)), fresh);
  const buffered = app.buffered;
  app.buffered = null;
  for (const e of buffered) if (tree.at === undefined || e.at > tree.at) dag.setState(e.id, e.state);
  app.treeLoaded = true;
  app.buildGone = false;
  if (fresh) {
    app.timings = { treeFetchMs: Math.round(t1 - t0), treeSteps: tree.steps.length };
    if (app.stepId !== null) {
      dag.select(app.stepId, true);
      void loadStep();
    }
  }
  const b = tree.build;
  if (app.rows) {
    const how = b.finished ? `finished: ${b.status}${b.isCachedBuild ? ' (cached)' : ''}` : 'not queued in this runner';
    setBuildInfo(`build ${b.id} · ${b.project}:${b.jobset}:${b.job} · ${how} · ${tree.stepCount} step rows${tree.truncated ? ' (cut)' : ''}`);
    $('build-info').dataset.status = b.status ?? '';
    // Open on the step that failed it.
    if (fresh && app.stepId === null && b.failedStep !== null) selectStep(b.failedStep, true);
  } else setBuildInfo(`build ${b.id} · ${b.project}:${b.jobset} · ${tree.stepCount} unfinished steps${tree.truncated ? ' (cut)' : ''}`);
  // Layout and the first frame are measured where they happen (afterDraw).
  dag.requestDraw();
}

function setBuildInfo(text) {
  $('build-info').textContent = text;
}

async function refreshBuilds() {
  let r;
  try {
    r = await api('/status/builds?limit=500');
  } catch {
    return;
  }
  app.builds = r.builds;
  const key = r.builds.map((b) => `${b.id}:${b.state}`).join(',');
  if (key !== app.buildsKey) {
    app.buildsKey = key;
    renderBuildSelect();
  }
  const listed = r.builds.some((b) => b.id === app.buildId);
  if (app.buildId === null && r.builds.length > 0) selectBuild(pickBuild(r.builds));
  else if (app.buildId !== null && app.buildGone && !app.treeLoaded && listed) selectBuild(app.buildId, app.stepId);
  // Shown from the database while not queued here, and now queued: live.
  else if (app.buildId !== null && app.rows && listed) selectBuild(app.buildId, app.stepId);
  else if (app.buildId !== null && app.treeLoaded && !listed && !app.buildGone && !app.rows) {
    // Ended while watched: the states and histories seen stay; its rows (final states, errors) are one click away.
    app.buildGone = true;
    const id = app.buildId;
    setBuildInfo(`build ${id} has ended (no longer queued): the last states seen are shown `);
    $('build-info').append(h('button', { class: 'chip', dataset: { testid: 'build-rows' }, onclick: () => selectBuild(id) }, 'show its rows'));
  }
}

/** The first build still waiting for dependencies (its graph is the interesting one), else the first. */
function pickBuild(builds) {
  return (builds.find((b) => b.state === 'queued') ?? builds[0]).id;
}

function renderBuildSelect() {
  const sel = $('build-select');
  const opts = app.builds.map((b) => ({ id: b.id, label: `#${b.id} ${b.project}:${b.jobset} ${drvName(b.drvPath)} — ${b.state ?? 'no steps'}` }));
  if (app.buildId !== null && !opts.some((o) => o.id === app.buildId)) opts.unshift({ id: app.buildId, label: `#${app.buildId} (not queued)` });
  sel.replaceChildren(
    h('option', { value: '', disabled: true, selected: app.buildId === null }, opts.length ? 'choose a build' : 'no build queued'),
    ...opts.map((o) => h('option', { value: String(o.id), selected: o.id === app.buildId }, o.label)),
  );
}

// ---------------------------------------------------------------- the Builds panel

/**
 * The search box goes to the server as it was typed (`q`): a build id, a store path or its hash
 * part, part of project:jobset:job or of a machine's name (the server tells them apart).
 */
function historyQuery() {
  const q = new URLSearchParams({ limit: '50' });
  const find = app.history.find.trim();
  if (find) q.set('q', find);
  if (app.history.status) q.set('status', app.history.status);
  return q.toString();
}

/**
 * One request at a time: a refresh asked for while one is out runs when it ends, with the text as
 * it is then (the server runs two searches at once at most, and typing asks on every key).
 */
async function refreshHistory() {
  if (app.history.off) return;
  if (app.history.inFlight) {
    app.history.again = true;
    return;
  }
  app.history.inFlight = true;
  try {
    await loadHistory();
  } finally {
    app.history.inFlight = false;
  }
  if (app.history.again) {
    app.history.again = false;
    void refreshHistory();
  }
}

async function loadHistory() {
  const query = historyQuery();
  let r;
  try {
    r = await api(`/status/history?${query}`);
  } catch (err) {
    // The text changed meanwhile: its own request is on its way, this answer is not shown.
    if (query !== historyQuery()) return;
    // A server without a database has no history: the panel says so, and is not asked again.
    if (err.status === 404) app.history.off = true;
    // A search the server refuses (too long, too many at once) or gave up on (too broad) says why, in place of the list.
    if (err.status === 404 || err.status === 400 || err.status === 503) {
      app.history.key = '';
      $('history').replaceChildren(h('li', { class: 'hint', dataset: { testid: 'history-error' } }, err.message));
    }
    return;
  }
  if (query !== historyQuery()) return;
  app.history.builds = r.builds;
  const key = `${app.buildId}|${app.history.find.trim()}|${r.builds.map((b) => `${b.id}:${outcomeOf(b)}`).join(',')}`;
  if (key === app.history.key) return;
  app.history.key = key;
  renderHistory();
}

function renderHistory() {
  const list = app.history.builds;
  $('history').replaceChildren(
    ...(list.length
      ? list.map((b) =>
          h(
            'li',
            { class: b.id === app.buildId ? 'selected' : '', dataset: { testid: 'history-row', build: String(b.id), job: b.job, outcome: b.finished ? b.statusName : (b.state ?? 'queued') } },
            h('button', { class: 'link', title: b.drvPath, onclick: () => selectBuild(b.id) }, `#${b.id} ${b.project}:${b.jobset}:${b.job}`),
            h('span', { class: 'badge', style: `background:${OUTCOME_COLORS[b.finished ? b.statusName : (b.state ?? 'queued')] ?? '#718096'}`, dataset: { testid: 'history-outcome' } }, outcomeOf(b)),
          ),
        )
      : [h('li', { class: 'hint', dataset: { testid: 'history-empty' } }, app.history.find.trim() ? 'no build matches' : 'no builds')]),
  );
}

// ---------------------------------------------------------------- the selected step

/** `at`: when the user asked (performance.now() time), to measure how long the details take. */
function selectStep(id, reveal, at = performance.now()) {
  app.stepId = id;
  app.stepEventAt = 0;
  app.detail = null;
  dag.select(id, reveal);
  updateUrl();
  renderStepDetails();
  app.timings.selectToShownMs = Math.round(performance.now() - at);
  void loadStep().then(() => {
    if (app.stepId === id) app.timings.selectToHistoryMs = Math.round(performance.now() - at);
  });
}

const scheduleStepReload = coalesced(() => loadStep(), 150);

async function loadStep() {
  const id = app.stepId;
  if (id === null) return;
  if (app.rows) {
    const r = app.rows.get(id);
    app.detail = r ? { ...r, fromDb: true, history: [] } : { missing: true, error: `no step row ${id}` };
    renderStepDetails();
    return;
  }
  try {
    const d = await api(`/status/step/${id}`);
    if (id !== app.stepId) return;
    app.detail = d;
    // The read is newer than the last event seen for the step (events come every 250 ms at most).
    const last = d.history[d.history.length - 1];
    if (last && last.at >= app.stepEventAt) dag.setState(id, d.state);
  } catch (err) {
    if (id !== app.stepId) return;
    app.detail = { missing: true, error: err.message };
  }
  renderStepDetails();
}

function renderStepDetails() {
  const box = $('step-details');
  const id = app.stepId;
  if (id === null) {
    box.replaceChildren(h('p', { class: 'hint' }, 'Click a step in the graph (or find one by name) for its details and history.'));
    $('step-history').replaceChildren();
    renderStepDiagram();
    return;
  }
  const d = app.detail && !app.detail.missing ? app.detail : null;
  const state = dag.stateOf(id) ?? d?.state ?? '?';
  const rows = [];
  const row = (k, ...v) => rows.push(h('tr', {}, h('th', {}, k), h('td', {}, ...v)));
  row('step', h('span', { dataset: { testid: 'step-id' } }, String(id)));
  row('name', h('b', { dataset: { testid: 'step-name' } }, dag.nameOf(id) ?? drvName(d?.drvPath)));
  row('state', badge(state, STEP_COLORS, 'step-state'));
  if (d?.fromDb) {
    row('status', h('span', { dataset: { testid: 'step-status' } }, d.statusName ?? '—'));
    row('derivation', h('code', { class: 'path' }, d.drvPath));
    row('type', d.type);
    if (d.system) row('system', d.system);
    if (d.machine) row('machine', h('span', { dataset: { testid: 'step-machine' } }, d.machine));
    if (d.startTime) row('time', `${secClock(d.startTime)} – ${d.stopTime ? secClock(d.stopTime) : '…'}${d.stopTime ? ` (${duration((d.stopTime - d.startTime) * 1000)})` : ''}`);
    if (d.errorMsg) row('error', h('pre', { class: 'error', dataset: { testid: 'step-error' } }, d.errorMsg));
    if (d.propagatedFrom) row('failed by', h('button', { class: 'chip', dataset: { testid: 'step-propagated' }, onclick: () => selectBuild(d.propagatedFrom) }, `build ${d.propagatedFrom}`));
    if (d.resolvedDrvPath) {
      row(
        'resolved to',
        d.resolvedTo != null
          ? h('button', { class: 'chip', dataset: { testid: 'step-resolved-to' }, onclick: () => selectStep(d.resolvedTo, true) }, `step ${d.resolvedTo} ${drvName(d.resolvedDrvPath)}`)
          : h('code', { class: 'path', dataset: { testid: 'step-resolved-to' } }, d.resolvedDrvPath),
      );
    }
    row('outputs', ...d.outputs.map((o) => h('div', {}, `${o.name}: `, h('code', { class: 'path' }, o.path ?? '(content-addressed)'))));
  } else if (d) {
    row('derivation', h('code', { class: 'path' }, d.drvPath));
    if (d.resolvedTo != null) row('resolved to', h('button', { class: 'chip', dataset: { testid: 'step-resolved-to' }, onclick: () => selectStep(d.resolvedTo, true) }, dag.nameOf(d.resolvedTo) ?? `step ${d.resolvedTo}`));
    row('system', `${d.system}${d.features?.length ? ` (${d.features.join(', ')})` : ''}`);
    row('builds', d.builds.join(', ') || '—');
    row('priority', `global ${d.globalPriority}, local ${d.localPriority}`);
    row('tries', String(d.tries));
    if (d.machine) row('machine', h('span', { dataset: { testid: 'step-machine' } }, `${d.machine}${d.busyName ? ` (${d.busyName})` : ''}`));
    if (d.waiting) row('waiting', h('span', { dataset: { testid: 'step-waiting' } }, describeWaiting(d.waiting)));
    if (d.runnableSince) row('runnable since', secClock(d.runnableSince));
    row('outputs', ...d.outputs.map((o) => h('div', {}, `${o.name}: `, h('code', { class: 'path' }, o.path ?? '(content-addressed)'))));
    if (d.accepts?.length) row('may take', d.accepts.join(', '));
  } else if (app.detail?.missing) {
    row('', h('span', { class: 'hint' }, 'no longer in the runner: last known state shown'));
  }
  const chips = (ids) => {
    const max = 24;
    const list = ids.slice(0, max).map((x) => h('button', { class: 'chip', title: dag.nameOf(x) ?? `step ${x}`, onclick: () => selectStep(x, true) }, dag.nameOf(x) ?? String(x)));
    if (ids.length > max) list.push(h('span', { class: 'hint' }, ` and ${ids.length - max} more`));
    return list.length ? list : ['—'];
  };
  // The runner lists unfinished neighbours only; the view remembers the finished ones too.
  const union = (a, b) => [...new Set([...(a ?? []), ...b])];
  const deps = union(d?.deps, dag.depsOf(id));
  const rdeps = union(d?.rdeps, dag.rdepsOf(id));
  if (!d?.fromDb) {
    row(`needs (${deps.length})`, ...chips(deps));
    row(`needed by (${rdeps.length})`, ...chips(rdeps));
  }
  row('log', h('button', { class: 'chip', dataset: { testid: 'step-log-button' }, onclick: () => openLog(id) }, app.log.stepId === id ? 'reload log' : 'show log'));
  box.replaceChildren(h('table', { class: 'kv' }, rows));
  if (app.log.stepId !== id) closeLog();

  const hist = d?.history ?? [];
  $('step-history').replaceChildren(
    ...(hist.length
      ? hist.map((t) =>
          h(
            'li',
            { dataset: { testid: 'history-entry' } },
            h('time', {}, clock(t.at)),
            ' ',
            h('b', {}, t.event),
            ' ',
            badge(t.from, STEP_COLORS),
            ' → ',
            badge(t.to, STEP_COLORS),
          ),
        )
      : [h('li', { class: 'hint' }, d?.fromDb ? 'a step row of a build not queued here: its final state is shown' : app.detail ? 'no transition recorded yet (transitions are recorded while someone watches)' : 'loading…')]),
  );
  renderStepDiagram();
}

// ---------------------------------------------------------------- a step's log

/** Where the selected step's log is: its row's (a finished build's) or its live step's. */
function logUrl(id, query) {
  const row = app.rows?.get(id);
  return `${row ? row.log : `/status/step/${id}/log`}?${query}`;
}

/** Shows the last 64 KiB of a step's log; while the step runs, follows it (only what was written since is fetched). */
async function openLog(id) {
  clearTimeout(app.log.timer);
  app.log.stepId = id;
  const pre = $('step-log');
  pre.hidden = false;
  let text;
  let live = false;
  try {
    const r = await fetch(logUrl(id, 'tail=65536'), { cache: 'no-store' });
    if (r.ok) {
      live = r.headers.get('x-log-stored') === 'live';
      const offset = Number(r.headers.get('x-log-offset'));
      const body = new Uint8Array(await r.arrayBuffer());
      app.log.end = offset + body.length;
      text = new TextDecoder().decode(body);
      if (offset > 0) text = `… (last ${body.length} of ${Number(r.headers.get('x-log-size'))} bytes)\n${text}`;
    } else text = ((await r.json().catch(() => null))?.error ?? `HTTP ${r.status}`);
  } catch (err) {
    text = err.message;
  }
  if (app.log.stepId !== id) return;
  pre.textContent = text || '(empty log)';
  pre.dataset.stored = live ? 'live' : 'ended';
  pre.scrollTop = pre.scrollHeight;
  if (live) app.log.timer = setTimeout(() => void followLog(id), 1000);
}

/** One step of following a live log: what was written after the text shown, appended. */
async function followLog(id) {
  let live = true;
  try {
    const r = await fetch(logUrl(id, `offset=${app.log.end}&length=1048576`), { cache: 'no-store' });
    if (app.log.stepId !== id) return;
    if (r.ok) {
      live = r.headers.get('x-log-stored') === 'live';
      const body = new Uint8Array(await r.arrayBuffer());
      if (app.log.stepId !== id) return;
      const pre = $('step-log');
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      if (body.length > 0) {
        if (pre.textContent === '(empty log)') pre.textContent = '';
        pre.append(new TextDecoder().decode(body));
        app.log.end += body.length;
      }
      pre.dataset.stored = live ? 'live' : 'ended';
      pre.dataset.followed = String(app.log.end);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
  } catch {
    // A failed poll is tried again.
  }
  if (app.log.stepId === id && live) app.log.timer = setTimeout(() => void followLog(id), 1000);
}

function closeLog() {
  clearTimeout(app.log.timer);
  app.log.stepId = null;
  const pre = $('step-log');
  if (pre) {
    pre.hidden = true;
    pre.textContent = '';
  }
}

function renderStepDiagram() {
  if (!app.diagrams) return;
  const id = app.stepId;
  const hist = app.detail?.history ?? [];
  renderDiagram($('step-diagram'), app.diagrams.step, {
    colors: STEP_COLORS,
    active: id === null ? null : (dag.stateOf(id) ?? app.detail?.state ?? null),
    traversed: hist,
    last: hist[hist.length - 1] ?? null,
    testid: 'step-diagram',
  });
}

// ---------------------------------------------------------------- machines

let machinesTimer = null;
function onMachines(list) {
  for (const m of list) {
    const v = app.machines.get(m.id);
    if (!v) continue;
    v.state = m.state;
    v.maxJobs = m.maxJobs;
    v.stats.currentJobs = m.jobs;
  }
  renderMachines();
  // The event carries states and counts; the jobs and figures come with the next read.
  if (!machinesTimer) {
    machinesTimer = setTimeout(() => {
      machinesTimer = null;
      void refreshMachines();
    }, 400);
  }
}

async function refreshMachines() {
  try {
    const r = await api('/status/machines');
    app.machines = new Map(Object.entries(r.machines));
  } catch (err) {
    $('machines').replaceChildren(h('p', { class: 'hint' }, `machines: ${err.message}`));
    return;
  }
  renderMachines();
}

/** ok / warn / bad, with the reason. */
function health(m) {
  const st = m.stats;
  if (m.state === 'disabled') return ['bad', `disabled until ${secClock(st.disabledUntil)} after ${st.consecutiveFailures} failures`];
  if (m.state === 'unreachable') return ['bad', 'unreachable (waiting for it to reconnect)'];
  if (m.state === 'gone') return ['bad', 'gone'];
  if (m.state === 'draining') return ['warn', 'draining'];
  if (m.state === 'joining') return ['warn', 'joining'];
  if (st.consecutiveFailures > 0) return ['warn', `${st.consecutiveFailures} failure${st.consecutiveFailures > 1 ? 's' : ''} in a row`];
  if (st.storeFreePercent < 10 || st.buildDirFreePercent < 10) return ['warn', 'low on disk'];
  if (!m.hasCapacity && st.currentJobs < m.maxJobs) return ['warn', 'over its load thresholds'];
  return ['ok', 'healthy'];
}

function renderMachines() {
  const list = [...app.machines.values()].sort((a, b) => (a.hostname < b.hostname ? -1 : 1));
  $('machines-count').textContent = String(list.length);
  $('machines').replaceChildren(
    ...(list.length === 0
      ? [h('p', { class: 'hint' }, 'No machine has joined.')]
      : list.map((m) => {
          const st = m.stats;
          const [level, why] = health(m);
          const slots = Array.from({ length: Math.min(m.maxJobs, 32) }, (_, k) => h('i', { class: k < st.currentJobs ? 'used' : '' }));
          return h(
            'div',
            { class: 'machine', dataset: { testid: 'machine', machine: m.hostname } },
            h(
              'div',
              { class: 'row' },
              h('b', {}, m.hostname),
              badge(m.state, BUILDER_COLORS, 'machine-state'),
              h('span', { class: `health ${level}`, dataset: { testid: 'machine-health' }, title: why }, why),
            ),
            h('div', { class: 'row small' }, h('span', { class: 'slots', title: `${st.currentJobs} of ${m.maxJobs} job slots` }, slots), `${st.currentJobs}/${m.maxJobs} jobs`),
            h(
              'div',
              { class: 'small' },
              `${m.systems.join(', ')}${m.supportedFeatures.length + m.mandatoryFeatures.length ? ` · ${[...m.supportedFeatures, ...m.mandatoryFeatures].join(', ')}` : ''} · speed ${m.speedFactor} · ${st.nrStepsDone} steps done (${st.succeededBuilds} ok, ${st.failedBuilds} failed)${st.nrStepsDone ? ` · avg ${duration(st.avgStepTimeMs)}` : ''}`,
            ),
            h(
              'div',
              { class: 'small' },
              `load ${st.load1.toFixed(2)} · pressure cpu ${Math.round(st.pressure?.cpuSome?.avg10 ?? 0)} mem ${Math.round(st.pressure?.memSome?.avg10 ?? 0)} io ${Math.round(st.pressure?.ioSome?.avg10 ?? 0)} · free: store ${Math.round(st.storeFreePercent)} %, build dir ${Math.round(st.buildDirFreePercent)} %`,
            ),
            m.jobs.length
              ? h(
                  'ul',
                  { class: 'jobs' },
                  m.jobs.map((drv) => {
                    const id = dag.idOfDrv(drv);
                    return h('li', {}, id === undefined ? drvName(drv) : h('button', { class: 'link', onclick: () => selectStep(id, true) }, drvName(drv)));
                  }),
                )
              : null,
          );
        })),
  );
  if (app.diagrams) {
    const counts = {};
    for (const m of list) counts[m.state] = (counts[m.state] ?? 0) + 1;
    renderDiagram($('builder-diagram'), app.diagrams.builder, { colors: BUILDER_COLORS, counts, testid: 'builder-diagram' });
  }
}

// ---------------------------------------------------------------- queues

async function refreshQueues() {
  let status;
  let queues;
  let jobs;
  try {
    [status, queues, jobs] = await Promise.all([api('/status'), api('/status/queues'), api('/status/queues/jobs?limit=5')]);
  } catch (err) {
    $('runner-status').textContent = `runner: ${err.message}`;
    return;
  }
  $('runner-status').textContent = `${status.status} · ${status.buildsQueued} builds · ${status.steps} steps · ${status.runnable} runnable · ${status.running} running · ${status.retryWaiting} waiting to retry`;
  const entries = Object.entries(queues.queues).sort(([a], [b]) => (a < b ? -1 : 1));
  const most = Math.max(1, ...entries.map(([, q]) => q.runnable));
  $('queues').replaceChildren(
    ...(entries.length === 0
      ? [h('p', { class: 'hint' }, 'No queue yet.')]
      : entries.map(([key, q]) =>
          h(
            'div',
            { class: 'queue', dataset: { testid: 'queue', platform: key } },
            h(
              'div',
              { class: 'row' },
              h('b', {}, q.system),
              q.features.length ? h('span', { class: 'small' }, q.features.join(', ')) : null,
              h('span', { class: 'grow' }),
              h('b', { dataset: { testid: 'queue-runnable' } }, String(q.runnable)),
              ' runnable',
            ),
            h('div', { class: 'bar' }, h('i', { style: `width:${(100 * q.runnable) / most}%` })),
            h(
              'div',
              { class: 'small' },
              `${q.capableMachines.length} capable machine${q.capableMachines.length === 1 ? '' : 's'}${q.capableMachines.length ? ` (${q.capableMachines.join(', ')})` : ''} · ${q.freeMachines} with room`,
              q.unsupportedSince ? h('span', { class: 'warn' }, ` · no machine since ${secClock(q.unsupportedSince)}`) : null,
            ),
            (jobs.queues[key] ?? []).length
              ? h(
                  'ol',
                  { class: 'jobs' },
                  jobs.queues[key].map((s) =>
                    h(
                      'li',
                      {},
                      dag.has(s.id) ? h('button', { class: 'link', onclick: () => selectStep(s.id, true) }, drvName(s.drvPath)) : drvName(s.drvPath),
                      h('span', { class: 'small' }, ` build ${s.buildId ?? '—'} · ${describeWaiting(s.waiting)}`),
                    ),
                  ),
                )
              : null,
          ),
        )),
  );
}

// ---------------------------------------------------------------- find and zoom

function renderFind() {
  const q = $('step-find').value.trim().toLowerCase();
  const out = $('find-results');
  if (!q) {
    out.hidden = true;
    return;
  }
  const found = [];
  for (let i = 0; i < dag.size && found.length < 12; i++) {
    if (String(dag.ids[i]) === q || dag.names[i].toLowerCase().includes(q)) found.push(dag.ids[i]);
  }
  out.replaceChildren(
    ...(found.length
      ? found.map((id) =>
          h(
            'button',
            {
              class: 'match',
              dataset: { testid: 'find-match', step: String(id) },
              onclick: () => {
                out.hidden = true;
                selectStep(id, true);
              },
            },
            h('i', { style: `background:${STEP_COLORS[dag.stateOf(id)]}` }),
            `${dag.nameOf(id)} (${id})`,
          ),
        )
      : [h('span', { class: 'hint' }, 'no step matches')]),
  );
  out.hidden = false;
}

// ---------------------------------------------------------------- start

/** For tests and the curious: what the page shows, by step id. */
window.__hydrantViz = {
  dag,
  app,
  get firstRenderMs() {
    return app.firstRenderMs;
  },
  stateOf: (id) => dag.stateOf(id),
  /** Page coordinates of a step's centre (scrolled into view first). */
  pointOf(id) {
    const c = dag.centerOf(id);
    if (!c) return null;
    const r = $('dag').getBoundingClientRect();
    return { x: r.left + c.x, y: r.top + c.y };
  },
};

async function start() {
  renderLegend();
  renderStepDetails();
  $('build-select').addEventListener('change', (e) => selectBuild(Number(e.target.value)));
  $('step-find').addEventListener('input', renderFind);
  $('step-find').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') $('find-results').querySelector('button')?.click();
    if (e.key === 'Escape') $('find-results').hidden = true;
  });
  $('history-find').addEventListener('input', (e) => {
    app.history.find = e.target.value;
    // Asked once typing pauses, not on every key.
    clearTimeout(app.history.typing);
    app.history.typing = setTimeout(() => void refreshHistory(), 150);
  });
  $('history-status').addEventListener('change', (e) => {
    app.history.status = e.target.value;
    void refreshHistory();
  });
  $('zoom-in').addEventListener('click', () => dag.setZoom(dag.zoom * 1.25));
  $('zoom-out').addEventListener('click', () => dag.setZoom(dag.zoom / 1.25));
  const params = new URLSearchParams(location.search);
  const build = params.get('build');
  const step = params.get('step');
  if (build !== null && /^\d+$/.test(build)) selectBuild(Number(build), step !== null && /^\d+$/.test(step) ? Number(step) : null);
  else openFeed(null);
  app.diagrams = await api('/ui/machines.json').catch(() => null);
  renderStepDiagram();
  await Promise.all([refreshMachines(), refreshQueues(), refreshBuilds(), refreshHistory()]);
  setInterval(refreshQueues, QUEUE_POLL_MS);
  setInterval(refreshBuilds, BUILDS_POLL_MS);
  setInterval(refreshHistory, BUILDS_POLL_MS);
  setInterval(refreshMachines, MACHINES_POLL_MS);
}

void start();
