/**
 * `hydrant serve` publishing to an s3:// cache on a real radosgw, with two
 * real builder processes: every output lands in the bucket signed (a large
 * one as a multipart upload), real Nix 2.8 copies them over HTTP with the
 * key trusted and refuses without it; a wrong secret stops `serve` at start
 * with one line.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/db.ts';
import { type CephS3, startCephS3 } from '../helpers/ceph-s3.ts';
import { runCli } from '../helpers/cli.ts';
import { type CliProcess, joined, startBuilder, startRunner, submit } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { failureOf, generateKey, trusting } from '../cache/fixtures.ts';

const PART = 5 * 1024 * 1024;

function release(nonce: string): string {
  return `{ }: let ${MK_DRV}
    base = mk { name = "s3-base-${nonce}"; script = "echo base ${nonce} > $out"; };
    # 17 bytes doubled 19 times: 8.5 MiB, above the 5 MiB part size with compression=none.
    big = mk { name = "s3-big-${nonce}"; script = "echo 0123456789abcdef > $out; i=0; while [ $i -lt 19 ]; do /bin/cat $out $out > $out.t; /bin/mv $out.t $out; i=$((i+1)); done"; };
  in {
    top = mk { name = "s3-top-${nonce}"; script = "/bin/mkdir $out; /bin/cat \${base} > $out/base; echo top >> $out/base"; };
    other = mk { name = "s3-other-${nonce}"; script = "/bin/cat \${base} > $out; echo other >> $out"; };
    inherit big;
  }`;
}

describe('serve with an s3:// remoteStoreAddr', () => {
  const db = useTestDatabase();
  let s3: CephS3;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-s3-'));
  const procs: CliProcess[] = [];
  let runner: CliProcess | undefined;
  let credentials: string;

  beforeAll(async () => {
    s3 = await startCephS3();
    await s3.createBucket('e2e-cache', { publicRead: true });
    credentials = join(dir, 'credentials');
    writeFileSync(
      credentials,
      `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n[wrong]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = nope\n`,
    );
  }, 180_000);

  afterAll(async () => {
    // The runner first, gracefully: stopping closes its caches (an S3 cache's staging directory goes).
    if (runner) {
      runner.child.kill('SIGTERM');
      await runner.exited;
    }
    for (const p of procs) p.child.kill('SIGKILL');
    await s3?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const storeUri = (secretKey: string, profile: string) =>
    `s3://e2e-cache?endpoint=${s3.hostPort}&scheme=http&profile=${profile}&compression=none&write-nar-listing=1&buffer-size=${PART}&secret-key=${secretKey}`;

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
      Buffer.from(await (await s3.client.send(new GetObjectCommand({ Bucket: 'e2e-cache', Key: `${p.slice(11, 43)}.narinfo` }))).Body!.transformToByteArray()).toString('utf8');
    for (const o of outs) expect(await narinfo(o.path)).toMatch(/^Sig: e2e-s3-1:/m);
    // The large NAR went up in parts (S3's multipart ETag ends in -<parts>), and none is left unfinished.
    const big = outs.find((o) => o.job === 'big')!.path;
    const url = /^URL: (.*)$/m.exec(await narinfo(big))![1]!;
    expect((await s3.client.send(new HeadObjectCommand({ Bucket: 'e2e-cache', Key: url }))).ETag).toMatch(/-2"?$/);
    expect((await s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'e2e-cache' }))).Uploads ?? []).toEqual([]);

    const paths = outs.map((o) => o.path);
    const copy = (root: string, publicKey: string) =>
      runNix('nix', ['copy', '--from', `${s3.endpoint}/e2e-cache`, '--to', join(dir, root), ...paths], { extraConfig: trusting(publicKey) });
    const refused = await failureOf(copy('untrusting', other.publicKey));
    expect(refused.stderr).toMatch(/signature/);
    await copy('elsewhere', key.publicKey);
    const { stdout } = await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', ...paths]);
    expect(stdout.toString()).toBe('');
  }, 300_000);
});
