/**
 * Backup buckets (`[[s3Backup]]`) on a real radosgw with a real runner and a
 * real builder: each bucket gets the closures of the builds of the jobs its
 * regex matches, with its compression and prefix, signed with the runner's
 * key, for real Nix to copy; a backup that keeps failing leaves the build's
 * status alone, and one cut short by SIGKILL is uploaded after a restart.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import { useS3Fleet } from '../helpers/s3-cache.ts';
import { type CliProcess, joined, startBuilder, startRunner, submit, TcpProxy } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { failureOf, generateKey, trusting } from '../cache/fixtures.ts';
import { promtoolCheck } from '../http/prometheus.ts';

function release(nonce: string): string {
  return `{ }: let ${MK_DRV}
    base = mk { name = "bk-base-${nonce}"; script = "echo base ${nonce} > $out"; };
  in {
    inherit base;
    # Refers to base: its closure is both.
    top = mk { name = "bk-top-${nonce}"; script = "echo \${base} > $out"; };
    other = mk { name = "bk-other-${nonce}"; script = "echo other ${nonce} > $out"; };
  }`;
}

/** A port nothing listens on. */
function deadPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

interface TargetStatus {
  target: string;
  done: number;
  pending: number;
  failing: number;
  thisRun: { builds: number; failures: number };
}

describe('backup buckets on radosgw', () => {
  const fleet = useS3Fleet('backup', ['backup-a', 'backup-b']);
  const { db, dir, procs, credentials } = fleet;
  let proxy: TcpProxy;
  let runner: CliProcess | undefined;
  let httpPort = 0;
  let key: { secretFile: string; publicKey: string };
  let extra: string;
  let token: string;

  const A = 's3://backup-a/cache/';
  const B = 's3://backup-b/';

  beforeAll(async () => {
    // Bucket A is reached through a proxy that can be pointed at nothing.
    proxy = await TcpProxy.start(Number(fleet.s3.hostPort.split(':')[1]));
    fleet.proxies.push(proxy);
    key = await generateKey(dir, 'runner-key-1');
    extra = [
      `remoteStoreAddr = ["file://${join(dir, 'cache')}?secret-key=${key.secretFile}"]`,
      `awsCredentialsFile = "${credentials}"`,
      '[[s3Backup]]',
      `store = "s3://backup-a?endpoint=127.0.0.1:${proxy.port}&scheme=http"`,
      'jobs = "e2e:[^:]+:top"',
      'compression = "xz"',
      'prefix = "cache/"',
      'retryInS = 1',
      '[[s3Backup]]',
      `store = "s3://backup-b?endpoint=${fleet.s3.hostPort}&scheme=http"`,
      'jobs = ".*:other"',
    ].join('\n');
    const started = await startRunner(dir, db.url, extra);
    runner = started.proc;
    fleet.graceful.push(runner);
    token = started.token;
    httpPort = await httpPortOf(runner);
    procs.push(startBuilder(dir, `127.0.0.1:${started.port}`, started.tokenFile, 'b1'));
    await joined(runner, ['b1']);
  }, 180_000);

  async function httpPortOf(proc: CliProcess): Promise<number> {
    const line = await proc.waitFor(/"port":(\d+),"writes":\w+,"msg":"HTTP API listening"/, 60_000);
    return Number(/"port":(\d+)/.exec(line)![1]);
  }

  async function backups(): Promise<Map<string, TargetStatus>> {
    const r = (await (await fetch(`http://127.0.0.1:${httpPort}/status/backups`)).json()) as { targets: TargetStatus[] };
    return new Map(r.targets.map((t) => [t.target, t]));
  }

  async function keys(bucket: string): Promise<string[]> {
    const r = await fleet.s3.client.send(new ListObjectsV2Command({ Bucket: bucket }));
    return (r.Contents ?? []).map((c) => c.Key!).sort();
  }

  async function narinfo(bucket: string, k: string): Promise<string> {
    const r = await fleet.s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: k }));
    return Buffer.from(await r.Body!.transformToByteArray()).toString('utf8');
  }

  async function outputs(jobset: string): Promise<Record<string, string>> {
    const { rows } = await db.pool.query<{ job: string; path: string }>(
      'select b.job, o.path from builds b join buildoutputs o on o.build = b.id join jobsets j on j.id = b.jobset_id where j.name = $1',
      [jobset],
    );
    return Object.fromEntries(rows.map((r) => [r.job, r.path]));
  }

  const hashOf = (p: string) => p.slice('/nix/store/'.length, '/nix/store/'.length + 32);

  it('copies the closure of each matching build to each bucket, compressed, under its prefix, signed with the runner key', async () => {
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(randomBytes(4).toString('hex')));
    await submit(db.url, file, 'main');
    await waitFor(async () => (await db.pool.query("select count(*)::int n from builds where finished = 1 and buildstatus = 0")).rows[0].n === 3, 180_000, 'builds to succeed');
    await waitFor(async () => {
      const s = await backups();
      return s.get(A)?.done === 1 && s.get(A)?.pending === 0 && s.get(B)?.done === 1 && s.get(B)?.pending === 0;
    }, 120_000, 'backups to finish');

    const out = await outputs('main');
    // A: the top job's closure (top and base), under cache/, xz, signed with the runner's key; nothing of other.
    const a = await keys('backup-a');
    expect(a).toContain('cache/nix-cache-info');
    expect(a.every((k) => k.startsWith('cache/'))).toBe(true);
    const aInfos = a.filter((k) => k.endsWith('.narinfo'));
    expect(aInfos.sort()).toEqual([`cache/${hashOf(out.top!)}.narinfo`, `cache/${hashOf(out.base!)}.narinfo`].sort());
    for (const k of aInfos) {
      const text = await narinfo('backup-a', k);
      expect(text).toMatch(/^Compression: xz$/m);
      expect(text).toMatch(/^URL: nar\/\w+\.nar\.xz$/m);
      expect(text).toMatch(/^Sig: runner-key-1:/m);
    }
    // B: only other, bzip2 (the default), no prefix.
    const b = await keys('backup-b');
    expect(b.filter((k) => k.endsWith('.narinfo'))).toEqual([`${hashOf(out.other!)}.narinfo`]);
    const bInfo = await narinfo('backup-b', `${hashOf(out.other!)}.narinfo`);
    expect(bInfo).toMatch(/^Compression: bzip2$/m);
    expect(bInfo).toMatch(/^Sig: runner-key-1:/m);

    // Real Nix copies from the bucket with the runner's key trusted, and refuses without it.
    const other = await generateKey(dir, 'someone-else-1');
    const copy = (root: string, publicKey: string) =>
      runNix('nix', ['copy', '--from', `${fleet.s3.endpoint}/backup-a/cache`, '--to', join(dir, root), out.top!], { extraConfig: trusting(publicKey) });
    expect((await failureOf(copy('untrusting', other.publicKey))).stderr).toMatch(/signature/);
    await copy('elsewhere', key.publicKey);
    const { stdout } = await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', out.top!, out.base!]);
    expect(stdout.toString()).toBe('');

    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toContain(`hydrant_backup_builds_total{bucket="${A}"} 1`);
    expect(metrics).toContain(`hydrant_backup_builds_total{bucket="${B}"} 1`);
    expect(await promtoolCheck(metrics)).toEqual({ code: 0, report: '' });
  }, 300_000);

  it('never fails a build over a failing backup, and uploads a backup a SIGKILLed runner left after its restart', async () => {
    // Bucket A unreachable: its backups fail and are retried; the builds succeed all the same.
    const rgw = proxy.target;
    proxy.target = await deadPort();
    proxy.cut();
    const file = join(dir, 'release2.nix');
    writeFileSync(file, release(randomBytes(4).toString('hex')));
    await submit(db.url, file, 'second');
    await waitFor(async () => (await db.pool.query("select count(*)::int n from builds where finished = 1 and buildstatus = 0")).rows[0].n === 6, 180_000, 'builds to succeed');
    await waitFor(async () => ((await backups()).get(A)?.thisRun.failures ?? 0) >= 2, 120_000, 'backup attempts to fail');
    const s = (await backups()).get(A)!;
    expect(s.pending).toBe(1);
    expect(s.failing).toBe(1);
    const top = (await outputs('second')).top!;
    expect((await keys('backup-a')).includes(`cache/${hashOf(top)}.narinfo`)).toBe(false);
    expect(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()).toMatch(new RegExp(`^hydrant_backup_failures_total\\{bucket="${A}"\\} [1-9]`, 'm'));
    // The build's row is as it ended.
    expect((await db.pool.query("select b.buildstatus from builds b join jobsets j on j.id = b.jobset_id where j.name = 'second' and b.job = 'top'")).rows).toEqual([{ buildstatus: 0 }]);

    // Killed with the backup pending; the bucket comes back; the next start resumes it.
    runner!.child.kill('SIGKILL');
    await runner!.exited;
    proxy.target = rgw;
    // As if the runner had died between other's end and its queueing: no queue row, nothing in B.
    const otherPath = (await outputs('second')).other!;
    await fleet.s3.client.send(new DeleteObjectCommand({ Bucket: 'backup-b', Key: `${hashOf(otherPath)}.narinfo` }));
    const removed = await db.pool.query("delete from hydrant.backup_queue q using builds b, jobsets j where q.build = b.id and j.id = b.jobset_id and j.name = 'second' and b.job = 'other' and q.target = $1", [B]);
    expect(removed.rowCount).toBe(1);
    const restarted = await startRunner(dir, db.url, extra, { token });
    runner = restarted.proc;
    fleet.graceful.push(runner);
    httpPort = await httpPortOf(runner);
    await waitFor(async () => (await keys('backup-a')).includes(`cache/${hashOf(top)}.narinfo`), 120_000, 'the pending backup to be uploaded');
    await waitFor(async () => {
      const t = (await backups()).get(A);
      return t?.pending === 0 && t.done === 2;
    }, 60_000, 'the queue to be empty');
    expect(await narinfo('backup-a', `cache/${hashOf(top)}.narinfo`)).toMatch(/^Sig: runner-key-1:/m);
    // The scan at start found the build that was never queued.
    await waitFor(async () => (await keys('backup-b')).includes(`${hashOf(otherPath)}.narinfo`), 60_000, 'the unqueued build to be backed up');
  }, 400_000);
});
