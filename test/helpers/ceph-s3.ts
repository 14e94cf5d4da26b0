/**
 * A real S3 server for tests: Ceph's radosgw over one monitor and one
 * memstore OSD on 127.0.0.1 (ceph-s3.sh), in a temporary directory, started
 * once per test file (≈12 s) and stopped by pid afterwards.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CreateBucketCommand, PutBucketPolicyCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from '../../src/db/embedded.ts';

export interface CephS3 {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  /** `127.0.0.1:PORT`, as an s3:// store URI's `endpoint=` takes it with `scheme=http`. */
  hostPort: string;
  accessKey: string;
  secretKey: string;
  /** A client with the test user's credentials. */
  client: S3Client;
  /** Runs `radosgw-admin` against this cluster (quotas, user changes). */
  admin(args: string[]): Promise<string>;
  /** Creates a bucket; `publicRead` lets anonymous HTTP clients (Nix's http:// store) read its objects. */
  createBucket(name: string, options?: { publicRead?: boolean }): Promise<void>;
  stop(): Promise<void>;
}

// The SDK's notice about its future Node requirement would clutter every test run's output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const SCRIPT = join(import.meta.dirname, 'ceph-s3.sh');

export async function startCephS3(): Promise<CephS3> {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-ceph-'));
  const [rgwPort, monPort] = [await freePort(), await freePort()];
  const accessKey = 'HYDRANTTEST';
  const secretKey = 'hydrant-test-secret';
  const stopDaemons = () => {
    for (const f of ['mon', 'osd', 'rgw']) {
      let pid: number;
      try {
        pid = Number(readFileSync(join(dir, 'run', `${f}.pid`), 'utf8').trim());
      } catch {
        continue;
      }
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await promisify(execFile)(SCRIPT, [dir, String(rgwPort), String(monPort), accessKey, secretKey], { timeout: 120_000 });
  } catch (e) {
    const log = (() => {
      try {
        return readFileSync(join(dir, 'log', 'client.rgw.log'), 'utf8').split('\n').slice(-20).join('\n');
      } catch {
        return '';
      }
    })();
    stopDaemons();
    throw new Error(`could not start radosgw: ${(e as { stderr?: string }).stderr ?? (e as Error).message}\n${log}`);
  }
  const endpoint = `http://127.0.0.1:${rgwPort}`;
  const client = new S3Client({
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: accessKey, secretAccessKey: secretKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return {
    endpoint,
    hostPort: `127.0.0.1:${rgwPort}`,
    accessKey,
    secretKey,
    client,
    async admin(args) {
      const { stdout } = await promisify(execFile)('radosgw-admin', ['-c', join(dir, 'ceph.conf'), '-n', 'client.rgw', ...args], { timeout: 60_000 });
      return stdout;
    },
    async createBucket(name, options = {}) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
      if (options.publicRead) {
        const policy = {
          Version: '2012-10-17',
          Statement: [{ Effect: 'Allow', Principal: '*', Action: ['s3:GetObject'], Resource: [`arn:aws:s3:::${name}/*`] }],
        };
        await client.send(new PutBucketPolicyCommand({ Bucket: name, Policy: JSON.stringify(policy) }));
      }
    },
    async stop() {
      client.destroy();
      stopDaemons();
    },
  };
}
