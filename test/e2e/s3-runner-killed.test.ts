/**
 * A runner SIGKILLed in the middle of a multipart upload to a radosgw
 * cache, then restarted: no corrupt object, no missing narinfo (the output
 * it had imported but not published is published after the restart, not
 * counted as built), and after `hydrant cache gc` no unfinished multipart
 * upload. The runner reaches radosgw through a throttling proxy, so the
 * upload lasts long enough to be caught in the middle.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { tmpdir } from 'node:os';
import type { Socket } from 'node:net';
import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/db.ts';
import { type CephS3, startCephS3 } from '../helpers/ceph-s3.ts';
import { runCli } from '../helpers/cli.ts';
import { type CliProcess, PairedProxy, QUICK_RECONNECT, joined, startBuilder, startRunner, submit } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { generateKey, trusting } from '../cache/fixtures.ts';
import { encodeBase32 } from '../../src/nix/base32.ts';

const PART = 5 * 1024 * 1024;
/** Bytes per second the proxy lets through towards radosgw: the ~38 MiB NAR takes seconds to upload. */
const RATE = 4 * 1024 * 1024;

/** A proxy that forwards at most RATE bytes a second towards the target (answers pass freely). */
class ThrottleProxy extends PairedProxy {
  static start(target: number): Promise<ThrottleProxy> {
    return new ThrottleProxy(target).listen();
  }
  protected relay(client: Socket, upstream: Socket): void {
    this.pair(client, upstream);
    upstream.pipe(client);
    const tick = 100;
    let budget = (RATE * tick) / 1000;
    const refill = setInterval(() => {
      budget = (RATE * tick) / 1000;
      if (client.isPaused()) client.resume();
    }, tick);
    client.on('close', () => clearInterval(refill));
    client.on('data', (chunk: Buffer) => {
      upstream.write(chunk);
      budget -= chunk.length;
      if (budget <= 0) client.pause();
    });
  }}

function release(nonce: string): string {
  return `{ }: let ${MK_DRV}
    small = mk { name = "killed-small-${nonce}"; script = "echo small ${nonce} > $out"; };
  in {
    # ~77 bytes (a reference to small and 17 more) doubled 19 times: ~38 MiB, eight parts of 5 MiB with compression=none.
    big = mk { name = "killed-big-${nonce}"; deps = [ small ]; script = "echo \${small} > $out; echo 0123456789abcdef >> $out; i=0; while [ $i -lt 19 ]; do /bin/cat $out $out > $out.t; /bin/mv $out.t $out; i=$((i+1)); done"; };
  }`;
}

describe('a runner SIGKILLed mid multipart upload to radosgw', () => {
  const db = useTestDatabase();
  let s3: CephS3;
  let proxy: ThrottleProxy;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-s3-killed-'));
  const procs: CliProcess[] = [];
  let runner: CliProcess | undefined;
  const BUCKET = 'killed-cache';

  beforeAll(async () => {
    s3 = await startCephS3();
    await s3.createBucket(BUCKET, { publicRead: true });
    proxy = await ThrottleProxy.start(Number(s3.hostPort.split(':')[1]));
  }, 180_000);

  afterAll(async () => {
    if (runner) {
      runner.child.kill('SIGTERM');
      await runner.exited;
    }
    for (const p of procs) p.child.kill('SIGKILL');
    await proxy?.close();
    await s3?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const unfinished = async () => (await s3.client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET }))).Uploads ?? [];
  const objects = async (prefix = '') => ((await s3.client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!);
  const read = async (key: string) => Buffer.from(await (await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body!.transformToByteArray());

  it('leaves no corrupt object and no missing narinfo after the restart, and no unfinished upload after cache gc', async () => {
    const key = await generateKey(dir, 'killed-1');
    const credentials = join(dir, 'credentials');
    writeFileSync(credentials, `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n`);
    const uri = `s3://${BUCKET}?endpoint=127.0.0.1:${proxy.port}&scheme=http&compression=none&buffer-size=${PART}&secret-key=${key.secretFile}`;
    const extra = `remoteStoreAddr = ["${uri}"]\nawsCredentialsFile = "${credentials}"`;
    const first = await startRunner(dir, db.url, extra);
    runner = first.proc;
    procs.push(startBuilder(dir, `127.0.0.1:${first.port}`, first.tokenFile, 'b1', QUICK_RECONNECT));
    await joined(runner, ['b1']);

    const file = join(dir, 'release.nix');
    writeFileSync(file, release(randomBytes(4).toString('hex')));
    await submit(db.url, file, 'main');

    // The big output's upload has begun (a multipart upload exists): kill the runner there.
    await waitFor(async () => (await unfinished()).length > 0, 240_000, 'a multipart upload to begin');
    runner.child.kill('SIGKILL');
    await runner.exited;
    runner = undefined;
    const left = await unfinished();
    expect(left.length).toBeGreaterThan(0);
    const bigKey = left[0]!.Key!;
    // Killed mid-upload: the object is not there (a multipart upload stores nothing until completed).
    expect(await objects(bigKey)).toEqual([]);
    expect((await db.pool.query("select finished from builds where job = 'big'")).rows).toEqual([{ finished: 0 }]);

    const second = await startRunner(dir, db.url, extra, { token: first.token });
    runner = second.proc;
    // The builder reconnects to the new port through a restart of its own configuration: start another.
    procs.push(startBuilder(dir, `127.0.0.1:${second.port}`, second.tokenFile, 'b2', QUICK_RECONNECT));
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 300_000, 'the build to finish');
    expect((await db.pool.query('select job, buildstatus from builds')).rows).toEqual([{ job: 'big', buildstatus: 0 }]);

    // No missing narinfo: the big output and the small one it references are in the cache.
    const big = (await db.pool.query("select o.path from buildoutputs o join builds b on b.id = o.build where b.job = 'big'")).rows[0].path as string;
    const { stdout } = await runNix('nix-store', ['--query', '--requisites', big]);
    const closure = stdout.toString().trim().split('\n');
    expect(closure.length).toBe(2);
    const narinfos = new Set(await objects());
    for (const p of closure) expect(narinfos.has(`${basename(p).slice(0, 32)}.narinfo`)).toBe(true);

    // No corrupt object: every NAR object's bytes hash to its name (nar/<FileHash>.nar).
    const nars = await objects('nar/');
    expect(nars.length).toBe(2);
    for (const k of nars) {
      expect(k).toBe(`nar/${encodeBase32(createHash('sha256').update(await read(k)).digest())}.nar`);
    }
    // Real Nix copies the closure and checks every NarHash.
    await runNix('nix', ['copy', '--from', `${s3.endpoint}/${BUCKET}`, '--to', join(dir, 'copy'), big], { extraConfig: trusting(key.publicKey) });

    // The killed runner's upload is still open; cache gc (min-age 0) aborts it and keeps the live closure.
    expect((await unfinished()).map((u) => u.UploadId)).toEqual(left.map((u) => u.UploadId));
    const roots = join(dir, 'gc-roots');
    mkdirSync(roots, { recursive: true });
    writeFileSync(join(roots, basename(big)), '');
    const gc = await runCli(['cache', 'gc', '--store', `s3://${BUCKET}?endpoint=${s3.hostPort}&scheme=http`, '--roots-dir', roots, '--min-age', '0s'], {
      AWS_ACCESS_KEY_ID: s3.accessKey,
      AWS_SECRET_ACCESS_KEY: s3.secretKey,
    });
    expect(gc.code).toBe(0);
    expect(gc.stdout).toMatch(new RegExp(`^aborted: ${left.length} unfinished multipart uploads`, 'm'));
    expect(await unfinished()).toEqual([]);
    expect(new Set(await objects('nar/'))).toEqual(new Set(nars));
    await runNix('nix', ['copy', '--from', `${s3.endpoint}/${BUCKET}`, '--to', join(dir, 'copy-after-gc'), big], { extraConfig: trusting(key.publicKey) });
  }, 600_000);
});
