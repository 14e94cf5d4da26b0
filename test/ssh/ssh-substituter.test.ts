/**
 * `ssh://` substituters against a real sshd serving a private Nix store
 * with `nix-store --serve --write` (the forced command of hydra-provisioner's
 * README): paths come in with their closure over one kept connection, need
 * a signature by a trusted key unless the URI says `trusted=1`, and a NAR
 * that is not what the peer announced is refused before anything is
 * imported.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServeUri, serveSshArgs } from '../../src/cache/serve-source.ts';
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

  it('refuses a peer whose host key is not the one the URI gives', async () => {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(tmp, 'otherhost')]);
    const wrong = readFileSync(join(tmp, 'otherhost.pub'), 'utf8').trim();
    const { s } = await open(uri('', wrong));
    await expect(s.substitute([fx.paths.tree])).rejects.toMatchObject({ code: 'SSH_HOST_KEY' });
  });
});
