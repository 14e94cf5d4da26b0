/**
 * `ssh://` substituters against a real sshd serving a private Nix store
 * with `nix-store --serve --write` (the forced command of hydra-provisioner's
 * README): paths come in with their closure over one kept connection, need
 * a signature by a trusted key unless the URI says `trusted=1`, and a NAR
 * that is not what the peer announced is refused before anything is
 * imported.
 */
import { execFileSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { parseServeUri, serveSshArgs } from '../../src/cache/serve-source.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { freePort } from '../../src/db/embedded.ts';
import { Substituter } from '../../src/cache/substituter.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { createLogger } from '../../src/util/logger.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { buildFixtures, generateKey, type Fixtures } from '../cache/fixtures.ts';
import { runNix } from '../helpers/nix.ts';
import { startSshdServe, type SshdServe } from '../helpers/sshd-serve.ts';

describe('an ssh:// substituter (a nix-store --serve peer)', () => {
  let sshd: SshdServe;
  let pool: WorkerPool;
  let fx: Fixtures;
  let key: { secretFile: string; publicKey: string };
  let other: { secretFile: string; publicKey: string };
  const tmp = mkdtempSync(join(tmpdir(), 'hydrant-ssh-subst-'));
  const opened: Substituter[] = [];
  let n = 0;

  beforeAll(async () => {
    pool = new WorkerPool({ threads: 1 });
    [sshd, fx, key, other] = await Promise.all([startSshdServe(), buildFixtures(tmp), generateKey(tmp, 'peer-1'), generateKey(tmp, 'someone-else-1')]);
    // The peer holds the fixtures (imported from the host's store); user's closure is signed there, single is not.
    const closure = (await runNix('nix-store', ['--query', '--requisites', fx.paths.user, fx.paths.single])).stdout.toString().trim().split('\n');
    const exported = (await runNix('nix-store', ['--export', ...closure])).stdout as Buffer;
    await sshd.store.runChecked('nix-store', ['--import'], { input: exported });
    await sshd.store.runChecked('nix', ['store', 'sign', '--key-file', key.secretFile, '--recursive', fx.paths.user], { extraConfig: 'experimental-features = nix-command' });
  }, 180_000);

  afterAll(async () => {
    for (const s of opened) await s.close();
    await pool?.close();
    await sshd?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  const uri = (extra = '', hostKey = sshd.hostKey) =>
    `ssh://root@127.0.0.1:${sshd.port}?ssh-key=${sshd.keyFile}&base64-ssh-public-host-key=${Buffer.from(hostKey).toString('base64')}${extra}`;

  /** A fresh runner store and a Substituter over `url` into it. */
  async function open(url: string, trusted = [key.publicKey]): Promise<{ s: Substituter; store: PrivateStore; valid: (p: string[]) => Promise<Set<string>> }> {
    const store = await PrivateStore.create(join(tmp, `store-${n++}`));
    const valid = async (paths: string[]) => {
      const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
      const invalid = new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
      return new Set(paths.filter((p) => !invalid.has(p)));
    };
    const s = await Substituter.open({ urls: [url], trustedPublicKeys: trusted, pool, store, log: createLogger({ level: 'silent' }), queryValid: valid });
    opened.push(s);
    return { s, store, valid };
  }

  it('parses Nix\'s ssh store URI and runs ssh as Hydra does', () => {
    const u = parseServeUri(uri('&trusted=1&compress=true'));
    expect(u).toMatchObject({ destination: 'root@127.0.0.1', port: sshd.port, sshKey: sshd.keyFile, trusted: true, compress: true, hostKey: sshd.hostKey });
    expect(serveSshArgs(u, '/t/known_hosts')).toEqual([
      '-i', sshd.keyFile, '-oUserKnownHostsFile=/t/known_hosts', '-p', String(sshd.port), '-C',
      '-x', '-a', '-oBatchMode=yes', '-oConnectTimeout=60', '-oTCPKeepAlive=yes', '--', 'root@127.0.0.1', 'nix-store', '--serve',
    ]);
    expect(() => parseServeUri('ssh://host?bogus=1')).toThrow(/unknown parameter 'bogus'/);
    expect(() => parseServeUri('ssh://-oProxyCommand=x')).toThrow();
  });

  it('brings a signed closure in over one connection, verified; a path the peer lacks is not substitutable', async () => {
    const { s, valid } = await open(uri());
    expect(await s.substitute([fx.paths.user])).toBe(true);
    expect(await valid([fx.paths.user, fx.paths.tree])).toEqual(new Set([fx.paths.user, fx.paths.tree]));
    // The peer lacks multiOut: nothing to substitute.
    expect(await s.substitute([fx.paths.multiOut])).toBe(false);
    const source = (s as unknown as { sources: { connectionsOpened: number }[] }).sources[0]!;
    expect(source.connectionsOpened).toBe(1);
  });

  it('refuses a path without a trusted signature unless the URI says trusted=1 (Nix\'s rule)', async () => {
    const untrusting = await open(uri(), [other.publicKey]);
    await expect(untrusting.s.substitute([fx.paths.user])).rejects.toMatchObject({ code: 'SUBSTITUTE_UNTRUSTED' });
    expect(await untrusting.valid([fx.paths.user])).toEqual(new Set());
    // single carries no signature at all.
    const unsigned = await open(uri());
    await expect(unsigned.s.substitute([fx.paths.single])).rejects.toMatchObject({ code: 'SUBSTITUTE_UNTRUSTED' });
    expect(await unsigned.valid([fx.paths.single])).toEqual(new Set());
    const trusted = await open(uri('&trusted=1'), []);
    expect(await trusted.s.substitute([fx.paths.single])).toBe(true);
    expect(await trusted.valid([fx.paths.single])).toEqual(new Set([fx.paths.single]));
  });

  it('refuses a NAR that is not the one the peer announced, even from a trusted peer', async () => {
    // Corrupt the peer's copy behind its database's back: its NarHash no longer matches what DumpStorePath sends.
    const file = sshd.store.realPath(fx.paths.single);
    chmodSync(file, 0o644);
    writeFileSync(file, 'not what was built\n');
    const { s, valid } = await open(uri('&trusted=1'), []);
    await expect(s.substitute([fx.paths.single])).rejects.toThrow(/hash|NAR/i);
    expect(await valid([fx.paths.single])).toEqual(new Set());
  });

  it('refuses a peer whose host key is not the one the URI gives: skipped for the backoff period, logged once', async () => {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(tmp, 'otherhost')]);
    const wrong = readFileSync(join(tmp, 'otherhost.pub'), 'utf8').trim();
    const { s, lines } = await watched(uri('', wrong), () => 0);
    expect(await s.substitute([fx.paths.tree])).toBe(false);
    expect(failures(lines)).toMatchObject([{ code: 'SSH_HOST_KEY', substituter: `ssh://root@127.0.0.1:${sshd.port}` }]);
  });

  /** A Substituter over `urls` with a clock and a log the test reads. */
  async function watched(urls: string | string[], now: () => number): Promise<{ s: Substituter; lines: Record<string, unknown>[]; store: PrivateStore }> {
    const store = await PrivateStore.create(join(tmp, `store-${n++}`));
    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
        cb();
      },
    });
    const s = await Substituter.open({
      urls: Array.isArray(urls) ? urls : [urls], trustedPublicKeys: [key.publicKey], pool, store, log: createLogger({ level: 'info', destination }), now, backoffMs: 60_000,
      queryValid: async (paths) => {
        const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
        const invalid = new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
        return new Set(paths.filter((p) => !invalid.has(p)));
      },
    });
    opened.push(s);
    return { s, lines, store };
  }
  const failures = (lines: Record<string, unknown>[]) => lines.filter((l) => l.msg === 'substituter failed; skipping it for the backoff period');
  const connections = (s: Substituter) => (s as unknown as { sources: { connectionsOpened?: number }[] }).sources[0]!.connectionsOpened!;

  it('skips a peer on a closed port for the backoff period (the next cache answers), then asks it again', async () => {
    // A directory cache with user's closure, signed, after the unreachable peer.
    const dir = join(tmp, 'file-cache');
    const cache = await BinaryCache.open(`file://${dir}?secret-key=${key.secretFile}`, pool);
    await uploadClosure(cache, [fx.paths.user]);
    await cache.close();
    const closed = await freePort();
    const peer = `ssh://root@127.0.0.1:${closed}?ssh-key=${sshd.keyFile}&base64-ssh-public-host-key=${Buffer.from(sshd.hostKey).toString('base64')}`;
    let now = 1_000_000;
    const { s, lines } = await watched([peer, `file://${dir}`], () => now);

    expect(await s.substitute([fx.paths.user])).toBe(true);
    expect(connections(s)).toBe(1);
    expect(failures(lines)).toMatchObject([{ level: 40, substituter: `ssh://root@127.0.0.1:${closed}`, code: 'SERVE_CONNECTION', backoffS: 60 }]);
    // tree (user's reference, the next level) was looked up after the failure: the peer was skipped.
    expect(s.stats()[0]).toMatchObject({ failures: 1, skipped: 1, disabled: true });

    // Within the period: not asked (no ssh started), not logged again, counted as skipped.
    expect(await s.substitute([fx.paths.multiOut])).toBe(false);
    expect(await s.lookup(fx.paths.single)).toBeNull();
    expect(connections(s)).toBe(1);
    expect(failures(lines)).toHaveLength(1);
    expect(s.stats()[0]!.skipped).toBe(3);

    // After it: asked again (a miss was remembered only until then), fails again, one more line.
    now += 60_001;
    expect(s.stats()[0]!.disabled).toBe(false);
    expect(await s.lookup(fx.paths.multiOut)).toBeNull();
    expect(connections(s)).toBe(2);
    expect(failures(lines)).toHaveLength(2);
    expect(s.stats()[0]).toMatchObject({ failures: 2, disabled: true });
    expect(s.stats()[1]).toMatchObject({ substituter: `file://${dir}`, failures: 0, skipped: 0, disabled: false });
  });

  it('skips a peer whose sshd stopped, and takes it back once the period is over and sshd is up', async () => {
    let now = 5_000_000;
    const { s, lines } = await watched(uri(), () => now);
    expect(await s.substitute([fx.paths.tree])).toBe(true);
    expect(connections(s)).toBe(1);

    await sshd.kill();
    expect(await s.substitute([fx.paths.user])).toBe(false);
    expect(failures(lines)).toHaveLength(1);
    expect(failures(lines)[0]).toMatchObject({ substituter: `ssh://root@127.0.0.1:${sshd.port}` });
    const opened = connections(s);

    await sshd.restart();
    // Up again, but within the period: still skipped, nothing started.
    expect(await s.substitute([fx.paths.user])).toBe(false);
    expect(connections(s)).toBe(opened);
    expect(failures(lines)).toHaveLength(1);

    now += 60_001;
    expect(await s.substitute([fx.paths.user])).toBe(true);
    expect(connections(s)).toBe(opened + 1);
    expect(lines.filter((l) => l.msg === 'substituter answers again')).toHaveLength(1);
    expect(s.stats()[0]).toMatchObject({ failures: 1, disabled: false });
  });
});
