import { execFile } from 'node:child_process';
import type { TypeStatus } from './wanted.ts';

/** What the provisioner reads of `hydra-queue-runner --status` (GET /status/provisioner). */
export interface RunnerStatus {
  readonly status: string;
  readonly machineTypes: Readonly<Record<string, TypeStatus>>;
  readonly machines: Readonly<Record<string, { readonly currentJobs?: number; readonly enabled?: boolean }>>;
}

const DOWN: RunnerStatus = Object.freeze({ status: 'down', machineTypes: {}, machines: {} });

function normalise(doc: unknown): RunnerStatus {
  if (typeof doc !== 'object' || doc === null) return DOWN;
  const d = doc as Record<string, unknown>;
  const obj = (v: unknown): Record<string, never> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, never>) : {});
  return { status: typeof d.status === 'string' ? d.status : 'down', machineTypes: obj(d.machineTypes), machines: obj(d.machines) };
}

/**
 * Reads the runner's status from its HTTP API (`statusUrl`, the base URL)
 * or from a command printing the `--status` JSON (`hydrant status`,
 * `hydra-queue-runner --status`, or either through ssh). Anything but an
 * answer is `{"status":"down"}`, as hydra-provisioner takes it.
 */
export function statusReader(opts: { statusUrl?: string; statusCommand?: readonly string[] }): () => Promise<RunnerStatus> {
  if (opts.statusUrl !== undefined) {
    const url = new URL('/status/provisioner', opts.statusUrl);
    return async () => {
      try {
        const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
        return r.ok ? normalise(await r.json()) : DOWN;
      } catch {
        return DOWN;
      }
    };
  }
  const [cmd, ...args] = opts.statusCommand!;
  return () =>
    new Promise((resolve) => {
      execFile(cmd!, args, { timeout: 60_000, maxBuffer: 64 << 20 }, (err, stdout) => {
        if (err) return resolve(DOWN);
        try {
          resolve(normalise(JSON.parse(stdout)));
        } catch {
          resolve(DOWN);
        }
      });
    });
}
