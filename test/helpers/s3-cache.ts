/**
 * Pieces for end-to-end tests of a runner publishing to S3 caches on a real
 * radosgw (ceph-s3.ts): the describe block's fleet with its radosgw, buckets
 * and AWS credentials file, and the jobset whose outputs include one large
 * enough for a multipart upload.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll } from 'vitest';
import { type CephS3, startCephS3 } from './ceph-s3.ts';
import { type Fleet, useFleet } from './fleet.ts';
import { MK_DRV } from './nix.ts';

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
