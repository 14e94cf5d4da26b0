// The XState lifecycles of src/machines (GET /ui/machines.json) drawn as
// small SVG state diagrams: states in rows by distance from the initial
// state (top to bottom), final states in the last row, transitions between the same two
// states merged into one labelled arrow, and an event that leads every
// unfinished state to one place (CANCEL, REMOVE) drawn faintly and named
// once. A diagram has ten states at most, so SVG is fine here.

const W = 86;
const H = 24;
const COL_GAP = 10;
const ROW_GAP = 46;
const PAD = 8;
/** Room on the right for the arcs of edges going back up. */
const RIGHT = 66;

export const BUILDER_COLORS = {
  joining: '#a0aec0',
  ready: '#38a169',
  busy: '#3182ce',
  disabled: '#dd6b20',
  unreachable: '#e53e3e',
  draining: '#d69e2e',
  gone: '#4a5568',
};

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Positions and edges of a machine definition; computed once per definition. */
export function layoutDiagram(def) {
  if (def._layout) return def._layout;
  const finals = new Set(def.states.filter((s) => s.final).map((s) => s.id));
  const col = new Map([[def.initial, 0]]);
  const queue = [def.initial];
  while (queue.length > 0) {
    const s = queue.shift();
    for (const t of def.transitions) {
      if (t.from === s && !finals.has(t.to) && !col.has(t.to)) {
        col.set(t.to, col.get(s) + 1);
        queue.push(t.to);
      }
    }
  }
  // `col` is the row (distance from the initial state); finals share the last one.
  const lastRow = Math.max(0, ...col.values()) + 1;
  for (const s of def.states) if (finals.has(s.id)) col.set(s.id, lastRow);
  for (const s of def.states) if (!col.has(s.id)) col.set(s.id, 0);
  const rows = [];
  for (const s of def.states) (rows[col.get(s.id)] ??= []).push(s.id);
  const widest = Math.max(...rows.map((r) => (r ? r.length : 0)));
  const bodyW = widest * (W + COL_GAP) - COL_GAP;
  const pos = new Map();
  rows.forEach((list, r) => {
    if (!list) return;
    const w = list.length * (W + COL_GAP) - COL_GAP;
    list.forEach((id, k) => pos.set(id, { x: PAD + (bodyW - w) / 2 + k * (W + COL_GAP), y: PAD + r * (H + ROW_GAP), col: r }));
  });

  // An event taking four or more states to one target is named once.
  const byEvent = new Map();
  for (const t of def.transitions) (byEvent.get(t.event) ?? byEvent.set(t.event, []).get(t.event)).push(t);
  const fanIn = [];
  const fanInEvents = new Set();
  for (const [event, ts] of byEvent) {
    if (ts.length >= 4 && ts.every((t) => t.to === ts[0].to)) {
      fanIn.push({ event, to: ts[0].to, from: ts.map((t) => t.from) });
      fanInEvents.add(event);
    }
  }
  const groups = new Map();
  for (const t of def.transitions) {
    if (fanInEvents.has(t.event)) continue;
    const key = `${t.from}\u0000${t.to}`;
    const g = groups.get(key) ?? groups.set(key, { from: t.from, to: t.to, events: [] }).get(key);
    g.events.push(t.event);
  }
  const width = PAD * 2 + bodyW + RIGHT;
  const bodyBottom = PAD + lastRow * (H + ROW_GAP) + H;
  const height = bodyBottom + PAD + (fanIn.length > 0 ? 14 * fanIn.length : 0);
  def._layout = { pos, edges: [...groups.values()], fanIn, width, height, bodyBottom, bodyRight: PAD + bodyW, finals };
  return def._layout;
}

/** Cubic path from one state to another: down to a later row, otherwise arched out to the right. */
function edgeGeometry(a, b, bend, right) {
  if (b.col > a.col) {
    const x1 = a.x + W / 2;
    const y1 = a.y + H;
    const x2 = b.x + W / 2;
    const y2 = b.y;
    const dy = (y2 - y1) / 2;
    return { p: [x1, y1, x1, y1 + dy, x2, y2 - dy, x2, y2] };
  }
  const x1 = a.x + W;
  const y1 = a.y + H / 2 + 4;
  const x2 = b.x + W;
  const y2 = b.y + H / 2 - 4;
  const cx = Math.max(right, x1, x2) + 18 + bend * 12;
  return { p: [x1, y1, cx, y1, cx, y2, x2, y2] };
}

function midpoint(p) {
  return [(p[0] + 3 * p[2] + 3 * p[4] + p[6]) / 8, (p[1] + 3 * p[3] + 3 * p[5] + p[7]) / 8];
}

/**
 * Renders `def` into `container`.
 * options: colors (state → colour), active (the highlighted state), counts
 * (state → number, shown as badges), traversed ([{from, to}] drawn bold),
 * last ({from, to}: the latest transition), testid (prefix of data-testid).
 */
export function renderDiagram(container, def, o = {}) {
  const L = layoutDiagram(def);
  const colors = o.colors ?? {};
  const traversed = new Set((o.traversed ?? []).map((t) => `${t.from}\u0000${t.to}`));
  const lastKey = o.last ? `${o.last.from}\u0000${o.last.to}` : null;
  const testid = o.testid ?? def.id;
  const parts = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${L.width} ${L.height}" width="100%" role="img" aria-label="${esc(def.id)} lifecycle">`,
    `<defs><marker id="arrow-${esc(testid)}" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="context-stroke"/></marker></defs>`,
  );
  // Faint fan-in edges first (under everything).
  for (const f of L.fanIn) {
    const b = L.pos.get(f.to);
    for (const from of f.from) {
      const a = L.pos.get(from);
      const key = `${from}\u0000${f.to}`;
      const on = traversed.has(key);
      const { p } = edgeGeometry(a, b, 0, L.bodyRight);
      parts.push(
        `<path d="M${p[0]},${p[1]} C${p[2]},${p[3]} ${p[4]},${p[5]} ${p[6]},${p[7]}" fill="none" stroke="${on ? '#2d3748' : '#e2e8f0'}" stroke-width="${on ? 2 : 1}" stroke-dasharray="${on ? '' : '3 3'}"/>`,
      );
    }
  }
  let bend = 0;
  for (const e of L.edges) {
    const a = L.pos.get(e.from);
    const b = L.pos.get(e.to);
    const back = b.col <= a.col;
    const { p } = edgeGeometry(a, b, back ? bend++ : 0, L.bodyRight);
    const key = `${e.from}\u0000${e.to}`;
    const isLast = key === lastKey;
    const on = traversed.has(key);
    const stroke = isLast ? '#dd6b20' : on ? '#2d3748' : '#a0aec0';
    parts.push(
      `<path data-edge="${esc(e.from)}-${esc(e.to)}" d="M${p[0]},${p[1]} C${p[2]},${p[3]} ${p[4]},${p[5]} ${p[6]},${p[7]}" fill="none" stroke="${stroke}" stroke-width="${isLast ? 2.5 : on ? 2 : 1}" marker-end="url(#arrow-${esc(testid)})"/>`,
    );
    const [mx, my] = midpoint(p);
    parts.push(
      `<text x="${mx}" y="${my - 3}" text-anchor="middle" class="edge-label${on || isLast ? ' on' : ''}">${esc(e.events.join(', '))}</text>`,
    );
  }
  for (const s of def.states) {
    const { x, y } = L.pos.get(s.id);
    const color = colors[s.id] ?? '#718096';
    const count = o.counts ? (o.counts[s.id] ?? 0) : null;
    const active = o.active === s.id || (count !== null && count > 0);
    const fill = active ? color : '#f7fafc';
    const text = active ? '#ffffff' : '#2d3748';
    parts.push(
      `<g data-testid="${esc(testid)}-state-${esc(s.id)}" data-active="${active}"${count !== null ? ` data-count="${count}"` : ''}>`,
      `<rect x="${x}" y="${y}" width="${W}" height="${H}" rx="${s.final ? 13 : 6}" fill="${fill}" stroke="${color}" stroke-width="${o.active === s.id ? 3 : 1.5}"/>`,
      `<text x="${x + W / 2}" y="${y + H / 2 + 4}" text-anchor="middle" class="state-label" fill="${text}">${esc(s.id)}${count ? ` ×${count}` : ''}</text>`,
      s.id === def.initial ? `<circle cx="${x + W / 2}" cy="${y - 5}" r="3.5" fill="#2d3748"/>` : '',
      '</g>',
    );
  }
  L.fanIn.forEach((f, k) => {
    parts.push(
      `<text x="${PAD}" y="${L.bodyBottom + 14 + 14 * k}" class="edge-label">${esc(f.event)}: ${f.from.length === def.states.length - L.finals.size ? 'any unfinished state' : esc(f.from.join(', '))} → ${esc(f.to)} (dashed)</text>`,
    );
  });
  parts.push('</svg>');
  container.innerHTML = parts.join('');
}
