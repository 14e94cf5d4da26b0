import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RunnerDaemon } from '../../src/daemon/serve.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { quietLog, waitFor } from '../helpers/runtime.ts';

/** Reads server-sent events from a fetch response body. */
async function* sse(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: unknown }> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of body) {
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (event && data) yield { event, data: JSON.parse(data) };
    }
  }
}

describe('live feed of step and machine transitions', () => {
  const db = useTestDatabase();
  let daemon: RunnerDaemon;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-events-'));
  // The slow step below builds until this exists: the feed is watching before any step ends, however slow the
  // machine. Builds run as a build user: the file must be visible to it.
  chmodSync(dir, 0o755);
  const go = join(dir, 'go');
  afterAll(async () => {
    writeFileSync(go, '');
    await daemon?.stop();
  });

  it("streams a build's step transitions while watched, keeps each step's history, and detaches when no one watches", async () => {
    daemon = new RunnerDaemon({ overrides: { dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), httpListen: '127.0.0.1:0', localBuilderJobs: 1 }, log: quietLog });
    await daemon.start();
    const base = `http://127.0.0.1:${daemon.http!.port}`;
    const scheduler = daemon.runtime!.scheduler;
    expect(scheduler.graph.observer).toBeNull();

    const nonce = randomBytes(4).toString('hex');
    const [top] = await instantiate(`let ${MK_DRV}
      slow = mk { name = "slow-${nonce}"; script = "while [ ! -e ${go} ]; do /bin/sleep 0.1; done; echo > $out"; };
    in mk { name = "top-${nonce}"; script = "/bin/cat \${slow} > $out"; }`);
    const d = await new LocalNixStore().readDerivation(top!);
    const jobset = await createJobset(db.pool, 'ev', 'main');
    const id = await queueBuild(db.pool, jobset, top!, 'top', d.system, d.outputs);
    await db.pool.query('notify builds_added');
    await waitFor(() => scheduler.graph.builds.has(id), 60_000, 'the build to load');

    const abort = new AbortController();
    const r = await fetch(`${base}/events?build=${id}`, { signal: abort.signal });
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(scheduler.graph.observer).not.toBeNull();
    // The feed listens to the local builder's actor (and to any machine joining later) only while watched.
    const local = scheduler.dispatcher.machines.get('localhost')!;
    expect(scheduler.dispatcher.machineObserverCount).toBe(1);
    expect(local.listenerCount).toBe(2); // the dispatcher's and the feed's
    const tree = (await (await fetch(`${base}/status/build/${id}`)).json()) as { steps: { id: number; drvPath: string }[] };
    const topId = tree.steps.find((s) => s.drvPath === top)!.id;
    writeFileSync(go, '');

    const seen: { id: number; state: string; event: string }[] = [];
    for await (const e of sse(r.body!)) {
      if (e.event === 'steps') seen.push(...(e.data as typeof seen));
      if (seen.some((s) => s.id === topId && s.state === 'succeeded')) break;
    }
    // The top step went runnable → … → succeeded, and the slow one before it.
    expect(seen.filter((s) => s.id === topId).map((s) => s.state)).toContain('succeeded');
    expect(new Set(seen.map((s) => s.id)).size).toBe(2);

    // The finished step's history stays readable while someone watches.
    const step = (await (await fetch(`${base}/status/step/${topId}`)).json()) as { state: string; history: { event: string; to: string }[] };
    expect(step.state).toBe('succeeded');
    expect(step.history.map((h) => h.to)).toEqual(['runnable', 'dispatched', 'building', 'succeeded']);
    abort.abort();
    await waitFor(() => scheduler.graph.observer === null, 5000, 'the feed to detach');
    expect(scheduler.dispatcher.machineObserverCount).toBe(0);
    expect(local.listenerCount).toBe(1);

    const diagrams = (await (await fetch(`${base}/ui/machines.json`)).json()) as { step: { initial: string; transitions: { from: string; event: string; to: string }[] } };
    expect(diagrams.step.initial).toBe('queued');
    expect(diagrams.step.transitions).toContainEqual({ from: 'queued', event: 'DEPS_DONE', to: 'runnable' });
  }, 60_000);
});
