import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ProvisionerConfig } from '../config/provisioner-config.ts';
import type { Logger } from '../util/logger.ts';
import type { ProvisionBackend } from './backend.ts';
import { CommandBackend } from './command-backend.ts';
import { LocalBackend, writeAtomic } from './local-backend.ts';
import { Provisioner, type PassReport } from './provisioner.ts';
import { statusReader } from './runner-status.ts';
import { startStatusServer } from './status-server.ts';

export function makeBackend(c: ProvisionerConfig, opts: { dieWithParent?: boolean } = {}): ProvisionBackend {
  return c.backend.type === 'local' ? new LocalBackend(c.backend, join(c.stateDir, 'local'), opts.dieWithParent) : new CommandBackend(c.backend, c.tag);
}

/**
 * Runs passes every `interval` seconds until `signal` aborts (or one pass
 * with `once`), writing each pass's report to `<stateDir>/status.json`.
 * Stopping leaves the machines as they are: the next provisioner adopts them.
 */
export async function runProvisioner(
  c: ProvisionerConfig,
  log: Logger,
  opts: { once: boolean; signal?: AbortSignal; backend?: ProvisionBackend; onReport?: (r: PassReport) => void },
): Promise<PassReport> {
  const p = new Provisioner({ config: c, backend: opts.backend ?? makeBackend(c), readStatus: statusReader(c), log });
  const server = c.httpListen ? await startStatusServer(c.httpListen, () => p.lastReport) : null;
  if (server) log.info({ address: server.address() }, 'provisioner status listening');
  try {
    for (;;) {
      const report = await p.pass();
      await writeAtomic(join(c.stateDir, 'status.json'), `${JSON.stringify(report)}\n`);
      log.info({ types: report.types }, 'pass done');
      opts.onReport?.(report);
      if (opts.once || opts.signal?.aborted) return report;
      try {
        await sleep(c.interval * 1000, undefined, { signal: opts.signal });
      } catch {
        return report;
      }
    }
  } finally {
    p.close();
    server?.close();
  }
}
