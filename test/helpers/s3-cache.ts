/**
 * Pieces for end-to-end tests of a runner publishing to S3 caches on a real
 * radosgw (ceph-s3.ts): the describe block's fleet with its radosgw, buckets
 * and AWS credentials file, and the jobset whose outputs include one large
 * enough for a multipart upload.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { beforeAll, expect } from 'vitest';
import { type CephS3, startCephS3 } from './ceph-s3.ts';
import { type Fleet, useFleet } from './fleet.ts';
import { MK_DRV, runNix } from './nix.ts';
import { failureOf, trusting } from '../cache/fixtures.ts';

/** The S3 part size the tests' caches use (`buffer-size=`): S3's smallest. */
export const PART = 5 * 1024 * 1024;

export interface S3Fleet extends Fleet {
  readonly s3: CephS3;
  /** An AWS credentials file: the radosgw user as `[default]`, plus the extra profiles asked for. */
  readonly credentials: string;
}

/**
 * A fleet (useFleet) with a radosgw started before the block's tests, the
 * `buckets` created on it (readable over anonymous HTTP, as Nix's http://
 * store reads them) and a credentials file whose `profiles` (name → secret
 * key) share the user's access key. After the block: the fleet's teardown,
 * then radosgw stopped and the fleet's directory removed.
 */
export function useS3Fleet(name: string, buckets: readonly string[], profiles: Readonly<Record<string, string>> = {}): S3Fleet {
  let s3: CephS3 | undefined;
  const fleet = useFleet(name, async () => {
    await s3?.stop();
    rmSync(fleet.dir, { recursive: true, force: true });
  });
  const credentials = join(fleet.dir, 'credentials');
  beforeAll(async () => {
    s3 = await startCephS3();
    for (const b of buckets) await s3.createBucket(b, { publicRead: true });
    const all = { default: s3.secretKey, ...profiles };
    writeFileSync(credentials, Object.entries(all).map(([p, secret]) => `[${p}]\naws_access_key_id = ${s3!.accessKey}\naws_secret_access_key = ${secret}\n`).join(''));
  }, 180_000);
  return {
    ...fleet,
    credentials,
    get s3() {
      if (s3 === undefined) throw new Error('radosgw is only there in the hooks and tests of its describe block');
      return s3;
    },
  };
}

/**
 * The S3 tests' jobset, each name `<prefix>-<attr>-<nonce>`: `base`; `top`,
 * a directory holding base's text; `big`, 8.5 MiB (17 bytes doubled 19
 * times), above PART with compression=none; and the `more` attributes
 * (Nix bindings that may refer to base).
 */
export function s3Release(prefix: string, nonce: string, more = ''): string {
  return `{ }: let ${MK_DRV}
    base = mk { name = "${prefix}-base-${nonce}"; script = "echo base ${nonce} > $out"; };
    big = mk { name = "${prefix}-big-${nonce}"; script = "echo 0123456789abcdef > $out; i=0; while [ $i -lt 19 ]; do /bin/cat $out $out > $out.t; /bin/mv $out.t $out; i=$((i+1)); done"; };
  in {
    top = mk { name = "${prefix}-top-${nonce}"; script = "/bin/mkdir $out; /bin/cat \${base} > $out/base; echo top >> $out/base"; };
    ${more}
    inherit big;
  }`;
}

/**
 * What an S3 test checks of the outputs of s3Release's builds (`outs`, with
 * their job names) in `bucket`: every narinfo signed with `key`; big's NAR
 * uploaded in two parts (S3's multipart ETag ends in -<parts>) and no
 * upload left unfinished; real Nix copying them all over HTTP with `key`
 * trusted, and refusing them with only `other` trusted.
 */
export async function expectPublished(
  fleet: S3Fleet,
  bucket: string,
  outs: readonly { path: string; job: string }[],
  key: { publicKey: string },
  other: { publicKey: string },
): Promise<void> {
  const { s3, dir } = fleet;
  const narinfo = async (p: string) =>
    Buffer.from(await (await s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: `${p.slice(11, 43)}.narinfo` }))).Body!.transformToByteArray()).toString('utf8');
  const keyName = key.publicKey.slice(0, key.publicKey.indexOf(':'));
  for (const o of outs) expect(await narinfo(o.path)).toMatch(new RegExp(`^Sig: ${keyName}:`, 'm'));
  const big = outs.find((o) => o.job === 'big')!.path;
  const url = /^URL: (.*)$/m.exec(await narinfo(big))![1]!;
  expect((await s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: url }))).ETag).toMatch(/-2"?$/);
  expect((await s3.client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? []).toEqual([]);

  const paths = outs.map((o) => o.path);
  const copy = (root: string, publicKey: string) =>
    runNix('nix', ['copy', '--from', `${s3.endpoint}/${bucket}`, '--to', join(dir, root), ...paths], { extraConfig: trusting(publicKey) });
  const refused = await failureOf(copy('untrusting', other.publicKey));
  expect(refused.stderr).toMatch(/signature/);
  await copy('elsewhere', key.publicKey);
  const { stdout } = await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', ...paths]);
  expect(stdout.toString()).toBe('');
}
