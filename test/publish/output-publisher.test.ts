import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { OutputPublisher } from '../../src/publish/output-publisher.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { generateKey } from '../cache/fixtures.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, quietLog, startRuntime, waitFor } from '../helpers/runtime.ts';

describe('a step counts as done only after its upload', () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-publish-'));
  const pool = new WorkerPool({ threads: 1 });
  afterAll(async () => {
    await pool.close();
  });

  it('an upload that fails retries the step; the build succeeds once the cache takes it, with roots and a compressed log', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [drvPath] = await instantiate(`let ${MK_DRV} in mk { name = "pub-${nonce}"; script = "echo hello-${nonce}; echo x > $out"; }`);
    const store = new LocalNixStore();
    const outPath = (await store.readDerivation(drvPath!)).outputs[0]!.path!;
    const key = await generateKey(dir, 'pub-test-1');
    const cacheDir = join(dir, 'cache');
    const cache = await BinaryCache.open(`file://${cacheDir}?compression=xz&secret-key=${key.secretFile}`, pool);
    // The cache cannot take NARs: its nar/ directory is a file.
    rmSync(join(cacheDir, 'nar'), { recursive: true });
    writeFileSync(join(cacheDir, 'nar'), 'not a directory');
    const rootsDir = join(dir, 'roots');
    const publisher = new OutputPublisher({ pool, caches: [cache], rootsDir, log: quietLog });
    const finish = publisher.finish.bind(publisher);
    let attempts = 0;
    publisher.finish = async (job, outcome) => {
      attempts++;
      try {
        return await finish(job, outcome);
      } finally {
        // Repair the cache after the first attempt failed.
        if (attempts === 1) {
          rmSync(join(cacheDir, 'nar'));
          mkdirSync(join(cacheDir, 'nar'));
        }
      }
    };

    const jobset = await createJobset(db.pool, 'pub', 'main');
    const d = await store.readDerivation(drvPath!);
    const id = await queueBuild(db.pool, jobset, drvPath!, 'pub', d.system, d.outputs);
    const { runtime } = await startRuntime(db.pool, store, {}, publisher);
    runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 1 }), new LocalNixBuilder({ hydraDataDir: dir }));
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [id])).rows[0].finished === 1, 60_000, 'the build');
    await runtime.scheduler.settle();
    await runtime.stop(0);

    expect(attempts).toBe(2);
    const steps = (await db.pool.query('select status, errormsg from buildsteps where build = $1 order by stepnr', [id])).rows;
    expect(steps.map((s) => s.status)).toEqual([3, 0]);
    expect(steps[0].errormsg).toMatch(/post-processing failed/);
    expect((await db.pool.query('select buildstatus from builds where id = $1', [id])).rows[0].buildstatus).toBe(0);
    expect(readFileSync(join(cacheDir, `${outPath.slice(11, 43)}.narinfo`), 'utf8')).toMatch(/^Sig: pub-test-1:/m);
    expect(existsSync(join(rootsDir, outPath.slice(11)))).toBe(true);
    const base = drvPath!.slice(11);
    expect(existsSync(join(dir, 'build-logs', base.slice(0, 2), `${base.slice(2)}.bz2`))).toBe(true);
    expect(readFileSync(join(cacheDir, 'log', base), 'utf8')).toContain(`hello-${nonce}`);
  }, 120_000);

  it('gives a step that printed nothing an empty compressed log, and the caches no log', async () => {
    const cacheDir = join(dir, 'cache-silent');
    const cache = await BinaryCache.open(`file://${cacheDir}?compression=zstd`, pool);
    const publisher = new OutputPublisher({ pool, caches: [cache], rootsDir: join(dir, 'roots-silent'), log: quietLog });
    const drvPath = `/nix/store/${'a'.repeat(32)}-silent-${randomBytes(4).toString('hex')}.drv`;
    const base = drvPath.slice(11);
    const logFile = join(dir, 'build-logs', base.slice(0, 2), base.slice(2));
    const job = { jobId: 'j1', drvPath, outputs: [], maxSilentTime: 0, buildTimeout: 0, maxLogSize: 0, maxOutputSize: 0 };
    const out = await publisher.finish(job, { kind: 'failure', status: 1, errorMsg: 'failed', startTime: 1, stopTime: 2, logFile });
    expect(out.kind === 'failure' && out.logFile).toBe(`${logFile}.bz2`);
    expect(existsSync(logFile)).toBe(false);
    expect((await pool.decompress(readFileSync(`${logFile}.bz2`), 'bzip2')).length).toBe(0);
    // The constant is what the bzip2 tool makes of no input.
    expect(readFileSync(`${logFile}.bz2`)).toEqual(execFileSync('bzip2', ['-c'], { input: Buffer.alloc(0) }));
    expect(existsSync(join(cacheDir, 'log', base))).toBe(false);
    expect(publisher.stats.logs).toBe(0);
  });
});
