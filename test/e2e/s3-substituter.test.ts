/**
 * An s3:// substituter on a real radosgw (docs/CACHES.md, "Substituter
 * backoff"), its bucket away at first (it does not exist yet: S3 answers
 * NoSuchBucket) and there later:
 *
 * - `hydrant serve` starts anyway, with one warning line naming the
 *   substituter, counts the failure, and builds nothing while the
 *   substituter is away (a job looked up then waits for a builder, nothing
 *   fetched); once the bucket exists and the backoff period has passed, a
 *   job whose outputs are only in the bucket is substituted from it (type-1
 *   rows, the build cached), with one line saying the substituter answers
 *   again. No builder is attached, so no step can end by being built.
 * - `?trusted=1` on an s3:// substituter: an unsigned path in the bucket is
 *   refused without it and imported with it (a fresh private store).
 * - A bucket that answers, with a cache for another store directory, is a
 *   misconfiguration: opening the substituter still fails (serve stops).
 *
 * One radosgw serves both (its start is the slow part).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { Substituter } from '../../src/cache/substituter.ts';
import { ConfigError, SubstituteUntrustedError } from '../../src/errors/index.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { createLogger } from '../../src/util/logger.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { generateKey } from '../cache/fixtures.ts';
import { startRunner, submit } from '../helpers/fleet.ts';
import { runNix, runNixLines } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { useS3Fleet } from '../helpers/s3-cache.ts';
import { parseMetrics } from '../http/prometheus.ts';

function release(nonce: string): string {
  const mk = (job: string) => `
  ${job}Dep = mk { name = "s3sub-${job}-dep-${nonce}"; script = "echo ${job}-dep > $out"; };
  ${job} = mk { name = "s3sub-${job}-${nonce}"; script = "echo ${job}-top \${${job}Dep} > $out"; };`;
  return `{ }:
let
  mk = { name, script }: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  ${mk('early')}
  ${mk('late')}
  unsigned = mk { name = "s3sub-unsigned-${nonce}"; script = "echo unsigned > $out"; };
in { inherit early late unsigned; }
`;
}

describe('s3:// substituters', () => {
  const fleet = useS3Fleet('s3sub', []);
  const { db, dir, procs, credentials } = fleet;

  /** Every file of a directory cache written by `nix copy`, put in `bucket` under the same names. */
  async function upload(cacheDir: string, bucket: string): Promise<void> {
    for (const f of readdirSync(cacheDir, { recursive: true }) as string[]) {
      const full = join(cacheDir, f);
      if (!statSync(full).isFile()) continue;
      await fleet.s3.client.send(new PutObjectCommand({ Bucket: bucket, Key: relative(cacheDir, full), Body: readFileSync(full) }));
    }
  }

  const invalid = async (paths: readonly string[]) => runNixLines('nix-store', ['--check-validity', '--print-invalid', ...paths]);

  it('serve starts with the bucket away, backs the substituter off, and substitutes from it once the bucket is there', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));
    const [earlyDrv, lateDrv] = await runNixLines('nix-instantiate', [file, '-A', 'early', '-A', 'late']);
    const [earlyTop, lateTop] = await runNixLines('nix-store', ['--realise', earlyDrv!, lateDrv!]);
    const closureOf = async (p: string) => (await runNixLines('nix-store', ['--query', '--requisites', p])).filter((q) => q.includes(`-${nonce}`));
    const early = await closureOf(earlyTop!);
    const late = await closureOf(lateTop!);
    expect(early).toHaveLength(2);
    expect(late).toHaveLength(2);
    // Both jobs' outputs only in a signed cache (a directory for now), not in the runner's store.
    const key = await generateKey(dir, 's3sub-upstream-1');
    const staged = join(dir, 'staged');
    await runNix('nix', ['copy', '--to', `file://${staged}?compression=none&secret-key=${key.secretFile}`, earlyTop!, lateTop!]);
    for (const top of [earlyTop!, lateTop!]) await runNix('nix-store', ['--delete', top]);
    for (const p of [...early, ...late]) if (p !== earlyTop && p !== lateTop) await runNix('nix-store', ['--delete', p]);
    expect(await invalid([...early, ...late])).toHaveLength(4);

    const bucket = `s3sub-${nonce}`;
    const substituter = `s3://${bucket}`;
    const own = join(dir, 'own-cache');
    const ownKey = await generateKey(dir, 's3sub-own-1');
    const runner = await startRunner(dir, db.url, [
      'useSubstitutes = true',
      `substituters = ["${substituter}?endpoint=${fleet.s3.hostPort}&scheme=http"]`,
      `trustedPublicKeys = ["${key.publicKey}"]`,
      'substituterBackoffInS = 2',
      `awsCredentialsFile = "${credentials}"`,
      `remoteStoreAddr = ["file://${own}?compression=none&secret-key=${ownKey.secretFile}"]`,
    ].join('\n'));
    procs.push(runner.proc);
    const httpPort = Number(/"port":(\d+)/.exec(await runner.proc.waitFor(/"port":(\d+),"writes":\w+,"msg":"HTTP API listening"/, 60_000))![1]);
    const metrics = async () => parseMetrics(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()).samples;

    // Started, with one warning line naming the substituter (without its query) and S3's error.
    const warnings = runner.proc.output().split('\n').filter((l) => l.includes('substituter unreachable at start'));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0]!)).toMatchObject({ substituter: substituter, code: 'S3_REQUEST' });
    expect(warnings[0]).toMatch(/NoSuchBucket/);
    expect((await metrics()).get(`hydrant_substituter_failures_total{substituter="${substituter}"}`)).toBeGreaterThanOrEqual(1);

    // While it is away, a job is looked up and not substituted: it waits for a builder (there is none).
    const ids = await submit(db.url, file, 's3sub', ['early']);
    await waitFor(async () => {
      const m = await metrics();
      return (m.get(`hydrant_substituter_failures_total{substituter="${substituter}"}`) ?? 0) + (m.get(`hydrant_substituter_skipped_total{substituter="${substituter}"}`) ?? 0) >= 2;
    }, 30_000, 'the early job to be looked up while the bucket is away');

    // The bucket comes: once the backoff period has passed, the next job is substituted from it.
    await fleet.s3.createBucket(bucket);
    await upload(staged, bucket);
    await waitFor(async () => (await metrics()).get(`hydrant_substituter_disabled{substituter="${substituter}"}`) === 0, 30_000, 'the backoff period to pass');
    const more = await submit(db.url, file, 's3sub', ['late']);
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [more.late])).rows[0].finished === 1, 60_000, 'the late build to finish');
    await runner.proc.waitFor(new RegExp(`"substituter":"s3://${bucket}"[^\\n]*"msg":"substituter answers again"`), 10_000);

    const build = (await db.pool.query('select buildstatus, iscachedbuild from builds where id = $1', [more.late])).rows[0];
    expect([build.buildstatus, build.iscachedbuild]).toEqual([0, 1]);
    const rows = (await db.pool.query<{ build: number; type: number; path: string }>('select s.build, s.type, o.path from buildsteps s join buildstepoutputs o on o.build = s.build and o.stepnr = s.stepnr')).rows;
    expect(rows.filter((r) => r.build === more.late).map((r) => [r.type, r.path]).sort()).toEqual(late.map((p) => [1, p]).sort());
    expect(await invalid(late)).toEqual([]);
    // The early job was looked up while the bucket was away: not fetched, no row, still waiting.
    expect(rows.filter((r) => r.build === ids.early)).toEqual([]);
    expect((await db.pool.query('select finished from builds where id = $1', [ids.early])).rows[0].finished).toBe(0);
  }, 240_000);

  it('accepts an unsigned path from an s3:// substituter only with ?trusted=1', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release-unsigned.nix');
    writeFileSync(file, release(nonce));
    const [drv] = await runNixLines('nix-instantiate', [file, '-A', 'unsigned']);
    const [path] = await runNixLines('nix-store', ['--realise', drv!]);
    const staged = join(dir, `unsigned-${nonce}`);
    await runNix('nix', ['copy', '--to', `file://${staged}?compression=none`, path!]);
    const bucket = `s3sub-unsigned-${nonce}`;
    await fleet.s3.createBucket(bucket);
    await upload(staged, bucket);
    const someKey = await generateKey(dir, 's3sub-some-1');

    const pool = new WorkerPool({ threads: 1 });
    try {
      const store = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-s3sub-store-')));
      const open = (query: string) =>
        Substituter.open({
          urls: [`s3://${bucket}?endpoint=${fleet.s3.hostPort}&scheme=http${query}`], trustedPublicKeys: [someKey.publicKey], pool, store, log: createLogger({ level: 'silent' }), awsCredentialsFile: credentials,
          queryValid: async (paths) => {
            const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
            const bad = new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
            return new Set(paths.filter((p) => !bad.has(p)));
          },
        });
      const untrusted = await open('');
      await expect(untrusted.substitute([path!])).rejects.toBeInstanceOf(SubstituteUntrustedError);
      await untrusted.close();
      expect((await store.run('nix-store', ['--check-validity', path!])).exitCode).not.toBe(0);
      const trusted = await open('&trusted=1');
      expect(await trusted.substitute([path!])).toBe(true);
      await trusted.close();
      expect((await store.run('nix-store', ['--check-validity', path!])).exitCode).toBe(0);
    } finally {
      await pool.close();
    }
  }, 120_000);

  it('still refuses at start a bucket that answers with a cache for another store directory', async () => {
    const bucket = `s3sub-other-${randomBytes(4).toString('hex')}`;
    await fleet.s3.createBucket(bucket);
    await fleet.s3.client.send(new PutObjectCommand({ Bucket: bucket, Key: 'nix-cache-info', Body: 'StoreDir: /other/store\nWantMassQuery: 1\nPriority: 40\n' }));
    const pool = new WorkerPool({ threads: 1 });
    try {
      const store = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-s3sub-other-')));
      const opening = Substituter.open({
        urls: [`s3://${bucket}?endpoint=${fleet.s3.hostPort}&scheme=http`], trustedPublicKeys: [], pool, store, log: createLogger({ level: 'silent' }), awsCredentialsFile: credentials,
        queryValid: async () => new Set(),
      });
      // A misconfiguration, not a bucket away: `serve` stops on it as before.
      await expect(opening).rejects.toBeInstanceOf(ConfigError);
      await expect(opening).rejects.toThrow(/\/other\/store/);
    } finally {
      await pool.close();
    }
  }, 60_000);
});
