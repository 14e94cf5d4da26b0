import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { provisionedDiagram } from '../status/machine-diagrams.ts';
import type { PassReport } from './provisioner.ts';

/**
 * The status page's files, by request path: the page, its script, the diagram
 * renderer and styles it shares with the runner's visualizer (src/ui), read
 * once. A fixed table: no path from a request reaches the filesystem.
 */
function pageFiles(): Map<string, { body: Buffer; type: string }> {
  const ui = (name: string) => readFileSync(new URL(`../ui/${name}`, import.meta.url));
  const js = 'text/javascript; charset=utf-8';
  return new Map([
    ['/', { body: ui('provisioner.html'), type: 'text/html; charset=utf-8' }],
    ['/ui/provisioner.js', { body: ui('provisioner.js'), type: js }],
    ['/ui/diagram.js', { body: ui('diagram.js'), type: js }],
    ['/ui/style.css', { body: ui('style.css'), type: 'text/css; charset=utf-8' }],
    ['/ui/machines.json', { body: Buffer.from(JSON.stringify(provisionedDiagram())), type: 'application/json' }],
  ]);
}

/** Prometheus text of a pass: machines made, stopped, destroyed, failed; wanted against running per type. */
export function provisionerMetrics(r: PassReport | null): string {
  if (!r) return '';
  const lines: string[] = [];
  const counter = (name: string, help: string, v: number): void => {
    lines.push(`# HELP hydrant_provisioner_${name}_total ${help}`, `# TYPE hydrant_provisioner_${name}_total counter`, `hydrant_provisioner_${name}_total ${v}`);
  };
  counter('machines_created', 'Machines the backend created.', r.counters.created);
  counter('machines_started', 'Stopped machines started again.', r.counters.started);
  counter('machines_stopped', 'Idle machines stopped.', r.counters.stopped);
  counter('machines_destroyed', 'Machines destroyed.', r.counters.destroyed);
  counter('machine_failures', 'Failed creates, starts, stops and destroys, and machines that never joined.', r.counters.failed);
  const esc = (s: string): string => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
  for (const [name, help, key] of [
    ['wanted', 'Machines the queue wants per system type (clamped to min and max).', 'wanted'],
    ['running', 'Machines up or on their way up per system type.', 'running'],
  ] as const) {
    lines.push(`# HELP hydrant_provisioner_machines_${name} ${help}`, `# TYPE hydrant_provisioner_machines_${name} gauge`);
    for (const [type, t] of Object.entries(r.types)) lines.push(`hydrant_provisioner_machines_${name}{type="${esc(type)}"} ${t[key]}`);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * `GET /status` (the last pass: each machine's state and the reason for it),
 * `GET /metrics`, and `GET /`: a page drawing the provisioned-machine
 * lifecycle with the machines in each state, and the machines' table.
 */
export function startStatusServer(listen: string, report: () => PassReport | null): Promise<Server> {
  const i = listen.lastIndexOf(':');
  const host = i > 0 ? listen.slice(0, i).replace(/^\[(.*)\]$/, '$1') : '127.0.0.1';
  const port = Number(i >= 0 ? listen.slice(i + 1) : listen);
  const files = pageFiles();
  const server = createServer((req, res) => {
    const file = req.method === 'GET' ? files.get(req.url ?? '') : undefined;
    if (file) {
      res.writeHead(200, { 'content-type': file.type, 'content-length': file.body.length, 'cache-control': 'no-cache' }).end(file.body);
    } else if (req.method === 'GET' && req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(report() ?? { status: 'starting' }));
    } else if (req.method === 'GET' && req.url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(provisionerMetrics(report()));
    } else res.writeHead(404).end();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
