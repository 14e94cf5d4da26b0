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
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { PART, s3Release, useS3Fleet } from '../helpers/s3-cache.ts';
import { runCli } from '../helpers/cli.ts';
import { type CliProcess, joined, startBuilder, startRunner, submit } from '../helpers/fleet.ts';
import { runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { failureOf, generateKey, trusting } from '../cache/fixtures.ts';

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

    // Every output's narinfo is in the bucket, signed with the cache's key.
    const narinfo = async (p: string) =>
      Buffer.from(await (await fleet.s3.client.send(new GetObjectCommand({ Bucket: 'e2e-cache', Key: `${p.slice(11, 43)}.narinfo` }))).Body!.transformToByteArray()).toString('utf8');
    for (const o of outs) expect(await narinfo(o.path)).toMatch(/^Sig: e2e-s3-1:/m);
    // The large NAR went up in parts (S3's multipart ETag ends in -<parts>), and none is left unfinished.
    const big = outs.find((o) => o.job === 'big')!.path;
    const url = /^URL: (.*)$/m.exec(await narinfo(big))![1]!;
    expect((await fleet.s3.client.send(new HeadObjectCommand({ Bucket: 'e2e-cache', Key: url }))).ETag).toMatch(/-2"?$/);
    expect((await fleet.s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'e2e-cache' }))).Uploads ?? []).toEqual([]);

    const paths = outs.map((o) => o.path);
    const copy = (root: string, publicKey: string) =>
      runNix('nix', ['copy', '--from', `${fleet.s3.endpoint}/e2e-cache`, '--to', join(dir, root), ...paths], { extraConfig: trusting(publicKey) });
    const refused = await failureOf(copy('untrusting', other.publicKey));
    expect(refused.stderr).toMatch(/signature/);
    await copy('elsewhere', key.publicKey);
    const { stdout } = await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', ...paths]);
    expect(stdout.toString()).toBe('');
  }, 300_000);
});
