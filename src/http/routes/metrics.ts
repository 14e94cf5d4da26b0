import type { Registry } from 'prom-client';
import type { Handler } from '../router.ts';

/** `GET /metrics`: Prometheus text exposition. */
export function metricsHandler(registry: Registry): Handler {
  return async (_req, res) => {
    const text = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
    res.end(text);
    return undefined;
  };
}
