// The page of `hydrant provision --http-listen`: the provisioned-machine
// lifecycle (GET /ui/machines.json, read from src/machines/provisioned-machine.ts)
// with the number of machines in each state, and each machine's state and the
// reason for it (GET /status, the last pass), re-read every 2 s.

import { renderDiagram } from './diagram.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;

export const PROVISIONED_COLORS = {
  requested: '#a0aec0',
  creating: '#ecc94b',
  backoff: '#dd6b20',
  joining: '#ed8936',
  active: '#3182ce',
  idle: '#38a169',
  stopping: '#805ad5',
  stopped: '#4a5568',
  starting: '#d69e2e',
  destroying: '#e53e3e',
  gone: '#2d3748',
};

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

let diagram = null;

function render(report) {
  const machines = report.machines ?? [];
  $('prov-status').textContent = `runner ${report.status}`;
  $('prov-status').dataset.status = report.status;
  $('prov-count').textContent = String(machines.length);
  const counts = {};
  for (const m of machines) counts[m.state] = (counts[m.state] ?? 0) + 1;
  if (diagram) renderDiagram($('prov-diagram'), diagram, { colors: PROVISIONED_COLORS, counts, testid: 'prov-diagram' });
  $('prov-types').replaceChildren(
    h('tr', {}, h('th', {}, 'type'), h('th', {}, 'runnable'), h('th', {}, 'wanted'), h('th', {}, 'running'), h('th', {}, 'existing')),
    ...Object.entries(report.types ?? {}).map(([type, t]) =>
      h('tr', { dataset: { testid: 'prov-type' } }, h('td', {}, type), h('td', {}, t.runnable), h('td', {}, t.wanted), h('td', {}, t.running), h('td', {}, t.existing)),
    ),
  );
  $('prov-machines').replaceChildren(
    h('tr', {}, h('th', {}, 'machine'), h('th', {}, 'type'), h('th', {}, 'state'), h('th', {}, 'reason'), h('th', {}, 'attempts')),
    ...machines.map((m) =>
      h(
        'tr',
        { dataset: { testid: 'prov-machine', id: m.id, state: m.state } },
        h('td', {}, m.name),
        h('td', {}, m.type),
        h('td', {}, h('span', { class: 'badge', style: `background:${PROVISIONED_COLORS[m.state] ?? '#718096'}` }, m.state)),
        h('td', {}, m.reason ?? ''),
        h('td', {}, m.attempts),
      ),
    ),
  );
}

async function poll() {
  try {
    if (!diagram) diagram = await (await fetch('/ui/machines.json', { cache: 'no-store' })).json();
    const r = await fetch('/status', { cache: 'no-store' });
    render(await r.json());
  } catch (err) {
    $('prov-status').textContent = `unreachable: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

void poll();
