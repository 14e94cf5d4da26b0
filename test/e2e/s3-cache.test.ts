/**
 * `hydrant serve` publishing to an s3:// cache on a real radosgw, with two
 * real builder processes: every output lands in the bucket signed (a large
 * one as a multipart upload), real Nix 2.8 copies them over HTTP with the
 * key trusted and refuses without it; a wrong secret stops `serve` at start
 * with one line.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectPublished, PART, s3Release, useS3Fleet } from '../helpers/s3-cache.ts';
import { runCli } from '../helpers/cli.ts';
import { type CliProcess, joined, startBuilder, startRunner, submit } from '../helpers/fleet.ts';
import { waitFor } from '../helpers/runtime.ts';
import { generateKey } from '../cache/fixtures.ts';

const release = (nonce: string): string => s3Release('s3', nonce, `other = mk { name = "s3-other-${nonce}"; script = "/bin/cat \${base} > $out; echo other >> $out"; };`);

describe('serve with an s3:// remoteStoreAddr', () => {
  const fleet = useS3Fleet('s3', ['e2e-cache'], { wrong: 'nope' });
  const { db, dir, procs, credentials } = fleet;
  let runner: CliProcess | undefined;

  const storeUri = (secretKey: string, profile: string) =>
    `s3://e2e-cache?endpoint=${fleet.s3.hostPort}&scheme=http&profile=${profile}&compression=none&write-nar-listing=1&buffer-size=${PART}&secret-key=${secretKey}`;

  it('refuses to start with a wrong secret, in one line naming the bucket and S3 error code', async () => {
    const key = await generateKey(dir, 'e2e-s3-bad-1');
    const config = join(dir, 'bad.toml');
    writeFileSync(
      config,
      `dbUrl = "${db.url}"\nhydraDataDir = "${join(dir, 'bad')}"\ngrpcListen = "127.0.0.1:0"\nhttpListen = "127.0.0.1:0"\n` +
        `remoteStoreAddr = ["${storeUri(key.secretFile, 'wrong')}"]\nawsCredentialsFile = "${credentials}"\n`,
    );
    const r = await runCli(['serve', '--config', config]);
    expect(r.code).not.toBe(0);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('hydrant:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^hydrant: S3_REQUEST: S3 GetObject of s3:\/\/e2e-cache\/nix-cache-info failed: SignatureDoesNotMatch \(HTTP 403\)/);
  }, 60_000);

  it('publishes every output of builds on two builders to the bucket, for Nix to substitute', async () => {
    const key = await generateKey(dir, 'e2e-s3-1');
    const other = await generateKey(dir, 'someone-else-1');
    const started = await startRunner(dir, db.url, `remoteStoreAddr = ["${storeUri(key.secretFile, 'default')}"]\nawsCredentialsFile = "${credentials}"`);
    runner = started.proc;
    fleet.graceful.push(runner);
    await runner.waitFor(/"cache":"s3:\/\/e2e-cache"[^\n]*"msg":"binary cache opened"/);
    for (const id of ['b1', 'b2']) procs.push(startBuilder(dir, `127.0.0.1:${started.port}`, started.tokenFile, id));
    await joined(runner, ['b1', 'b2']);

    const file = join(dir, 'release.nix');
    writeFileSync(file, release(randomBytes(4).toString('hex')));
    await submit(db.url, file, 'main');
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 180_000, 'builds to finish');
    expect((await db.pool.query('select job, buildstatus from builds order by job')).rows).toEqual([
      { job: 'big', buildstatus: 0 },
      { job: 'other', buildstatus: 0 },
      { job: 'top', buildstatus: 0 },
    ]);
    const outs = (await db.pool.query('select o.path, b.job from buildoutputs o join builds b on b.id = o.build')).rows as { path: string; job: string }[];

    await expectPublished(fleet, 'e2e-cache', outs, key, other);
  }, 300_000);
});
