import { createServer, type Server } from 'node:http';
import type { PassReport } from './provisioner.ts';

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

/** `GET /status` (the last pass: each machine's state and the reason for it) and `GET /metrics`. */
export function startStatusServer(listen: string, report: () => PassReport | null): Promise<Server> {
  const i = listen.lastIndexOf(':');
  const host = i > 0 ? listen.slice(0, i).replace(/^\[(.*)\]$/, '$1') : '127.0.0.1';
  const port = Number(i >= 0 ? listen.slice(i + 1) : listen);
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/status') {
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
