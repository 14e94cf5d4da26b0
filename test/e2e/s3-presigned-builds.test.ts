/**
 * usePresignedUploads end to end: builds on two builder processes whose
 * outputs go straight from the builders to a radosgw bucket (one in parts),
 * published with narinfos the runner signed; real Nix copies them with the
 * key trusted and refuses without.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectPublished, PART, s3Release, useS3Fleet } from '../helpers/s3-cache.ts';
import { type CliProcess, joined, startBuilder, startRunner, submit } from '../helpers/fleet.ts';
import { waitFor } from '../helpers/runtime.ts';
import { generateKey } from '../cache/fixtures.ts';
import { status, type ServiceError } from '@grpc/grpc-js';
import { Join, type RunnerMessage } from '../../src/protocol/gen/runner.ts';
import { createBuilderClient, PROTOCOL_VERSION } from '../../src/protocol/server.ts';

describe('serve with usePresignedUploads and an s3:// cache', () => {
  const fleet = useS3Fleet('presigned', ['presigned-cache']);
  const { db, dir, procs, credentials } = fleet;
  let runner: CliProcess | undefined;
  let grpcPort = 0;
  let tokenFile = '';
  let outputs: string[] = [];


  it('builders upload every output straight to the bucket; the runner signs; Nix substitutes', async () => {
    const key = await generateKey(dir, 'presigned-1');
    const other = await generateKey(dir, 'someone-else-1');
    const uri = `s3://presigned-cache?endpoint=${fleet.s3.hostPort}&scheme=http&compression=none&write-nar-listing=1&buffer-size=${PART}&secret-key=${key.secretFile}`;
    const started = await startRunner(dir, db.url, `remoteStoreAddr = ["${uri}"]\nawsCredentialsFile = "${credentials}"\nusePresignedUploads = true`);
    runner = started.proc;
    fleet.graceful.push(runner);
    grpcPort = started.port;
    tokenFile = started.tokenFile;
    await runner.waitFor(/"msg":"builders upload outputs straight to the S3 cache \(presigned URLs\)"/);
    for (const id of ['b1', 'b2']) procs.push(startBuilder(dir, `127.0.0.1:${started.port}`, started.tokenFile, id));
    await joined(runner, ['b1', 'b2']);

    const file = join(dir, 'release.nix');
    writeFileSync(file, s3Release('ps', randomBytes(4).toString('hex')));
    await submit(db.url, file, 'main');
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 180_000, 'builds to finish');
    expect((await db.pool.query('select job, buildstatus from builds order by job')).rows).toEqual([
      { job: 'big', buildstatus: 0 },
      { job: 'top', buildstatus: 0 },
    ]);
    const outs = (await db.pool.query('select o.path, b.job from buildoutputs o join builds b on b.id = o.build')).rows as { path: string; job: string }[];
    // Each output (and the dependency base) went up from its builder, not from the runner.
    for (const o of outs) expect(runner.output()).toContain(`"path":"${o.path}","msg":"output published by builder-direct upload"`);

    await expectPublished(fleet, 'presigned-cache', outs, key, other);
    outputs = outs.map((o) => o.path);
  }, 300_000);

  it('a builder asking for URLs for a job it does not own is refused', async () => {
    expect(outputs.length).toBeGreaterThan(0);
    const { readFileSync } = await import('node:fs');
    const evil = createBuilderClient(`127.0.0.1:${grpcPort}`, readFileSync(tokenFile, 'utf8').trim());
    const stream = evil.client.control();
    stream.on('error', () => {});
    try {
      stream.write({
        kind: { $case: 'join', value: Join.fromPartial({ protocolVersion: PROTOCOL_VERSION, machineId: 'evil', hostname: 'evil', systems: ['none'], maxJobs: 1 }) },
      });
      const joinedMsg = await new Promise<RunnerMessage>((resolve, reject) => {
        stream.once('data', resolve);
        stream.once('error', reject);
      });
      if (joinedMsg.kind?.$case !== 'joined') throw new Error('not joined');
      // The runner announces builder-direct uploads.
      expect(joinedMsg.kind.value.presignedUploads).toEqual({ compression: 'none', partSize: PART });
      evil.setSession(joinedMsg.kind.value.sessionId);
      const err = await new Promise<ServiceError | null>((resolve) =>
        evil.client.requestPresignedUpload(
          { jobId: 'someone-elses-job', storePath: outputs[0]!, fileSha256: Buffer.alloc(32), fileSize: 1, parts: [{ partNumber: 1, size: 1, md5: Buffer.alloc(16) }] },
          (e) => resolve(e),
        ),
      );
      expect(err?.code).toBe(status.PERMISSION_DENIED);
      const done = await new Promise<ServiceError | null>((resolve) =>
        evil.client.completePresignedUpload({ jobId: 'someone-elses-job', storePath: outputs[0]!, etags: [] }, (e) => resolve(e)),
      );
      expect(done?.code).toBe(status.PERMISSION_DENIED);
    } finally {
      stream.cancel();
      evil.client.close();
    }
  }, 60_000);
});
