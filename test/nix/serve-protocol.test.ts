import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServeConnectionError, ServeProtocolError } from '../../src/errors/index.ts';
import { basicDerivation } from '../../src/nix/basic-derivation.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { sha256 } from '../../src/nix/hash.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { hostStore, PrivateStore } from '../../src/nix/private-store.ts';
import { ServeConnection } from '../../src/nix/serve-protocol.ts';
import { NixBuildStatus, SERVE_MAGIC_2 } from '../../src/nix/serve-wire.ts';
import { exportPaths, queryPathInfos } from '../../src/nix/transfer.ts';
import { instantiate, MK_DRV, realise } from '../helpers/nix.ts';

const NO_LIMITS = { maxSilentTime: 0, buildTimeout: 0, maxLogSize: 0 };
const conns: ServeConnection[] = [];

async function basic(drvPath: string) {
  const drv = await basicDerivation(hostStore, parseDerivation(readFileSync(drvPath, 'utf8')));
  if (!drv) throw new Error(`${drvPath} has no basic form`);
  return drv;
}

/** A peer that answers the handshake as Nix 2.8 does and then writes `reply` whatever it is asked. */
function fakePeer(reply: Buffer) {
  const hello = Buffer.alloc(16);
  hello.writeBigUInt64LE(BigInt(SERVE_MAGIC_2), 0);
  hello.writeBigUInt64LE(0x207n, 8);
  const script = `process.stdout.write(Buffer.from('${Buffer.concat([hello, reply]).toString('hex')}', 'hex')); process.stdin.resume();`;
  return spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
}

describe('nix-store --serve --write, spoken by ServeConnection', () => {
  let dir: string;
  let remote: PrivateStore;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hydrant-serve-protocol-'));
    remote = await PrivateStore.create(dir);
  });
  afterAll(() => {
    for (const c of conns) c.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = async (): Promise<ServeConnection> => {
    const c = await ServeConnection.open(remote.spawn('nix-store', ['--serve', '--write']), 'private-store');
    conns.push(c);
    return c;
  };

  it('copies inputs both ways, builds, and dumps what it built byte for byte', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [dep1, dep2, top] = await instantiate(`let ${MK_DRV}
      dep1 = mk { name = "sp-dep1-${nonce}"; script = "echo one > $out"; };
      dep2 = mk { name = "sp-dep2-${nonce}"; script = "echo \${dep1} > $out"; };
    in [ dep1 dep2 (mk { name = "sp-top-${nonce}"; script = "echo building top; /bin/cat \${dep2} > $out; echo doc > $doc"; extra = { outputs = [ "out" "doc" ]; }; }) ]`);
    const [out1, out2] = await realise([dep1!, dep2!]);
    const c = await open();
    expect(c.remoteVersion).toBe(0x207); // Nix 2.8
    expect(c.canAddToStoreNar).toBe(true);
    expect(await c.queryValidPaths([out1!, out2!], { lock: true })).toEqual([]);

    // dep1 by AddToStoreNar (the peer checks the hash we give), dep2 (which refers to it) by ImportPaths.
    const [info1] = await queryPathInfos(hostStore, [out1!]);
    await c.addToStoreNar({ ...info1!, references: info1!.references }, narChunks(out1!));
    await c.importPaths(exportPaths(hostStore, [out2!]));
    expect((await c.queryValidPaths([out1!, out2!])).sort()).toEqual([out1, out2].sort());

    const infos = await c.queryPathInfos([out2!, `/nix/store/${'0'.repeat(32)}-absent`]);
    const [host2] = await queryPathInfos(hostStore, [out2!]);
    expect(infos).toHaveLength(1);
    expect(infos[0]).toMatchObject({ path: out2, references: [out1], narSize: host2!.narSize, narHash: host2!.narHash.format('base32'), deriver: dep2 });

    const drv = await basic(top!);
    const log: Buffer[] = [];
    const r = await c.buildDerivation(top!, drv, NO_LIMITS, (b) => log.push(b));
    expect(r.status).toBe(NixBuildStatus.Built);
    expect(Buffer.concat(log).toString()).toContain('building top');
    expect([...r.builtOutputs.keys()].map((k) => k.split('!')[1]).sort()).toEqual(['doc', 'out']);
    expect(r.stopTime).toBeGreaterThanOrEqual(r.startTime);

    const outPath = drv.outputs.get('out')!.path;
    const [outInfo] = await c.queryPathInfos([outPath]);
    // Its output holds dep2's contents: dep1's path.
    expect(outInfo!.references).toEqual([out1]);
    const chunks: Buffer[] = [];
    for await (const b of c.dumpStorePath(outPath)) chunks.push(b);
    const nar = Buffer.concat(chunks);
    expect(nar.equals((await remote.runChecked('nix-store', ['--dump', outPath])).stdout)).toBe(true);
    expect(sha256(nar).format('base32')).toBe(outInfo!.narHash);
    // The session goes on after the NAR.
    expect(await c.queryValidPaths([outPath])).toEqual([outPath]);
    // Built again: already valid.
    expect((await c.buildDerivation(top!, drv, NO_LIMITS, () => {})).status).toBe(NixBuildStatus.AlreadyValid);
  });

  it('reports the remote limits: build timeout, log size, and a failing builder', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [slow, loud, failing] = await instantiate(`let ${MK_DRV} in [
      (mk { name = "sp-slow-${nonce}"; script = "echo start; /bin/sleep 30; echo late > $out"; })
      (mk { name = "sp-loud-${nonce}"; script = "i=0; while [ $i -lt 2000 ]; do echo line $i of a loud build; i=$((i+1)); done; echo x > $out"; })
      (mk { name = "sp-fail-${nonce}"; script = "echo about to fail; exit 3"; })
    ]`);
    const c = await open();
    expect((await c.buildDerivation(slow!, await basic(slow!), { ...NO_LIMITS, buildTimeout: 1 }, () => {})).status).toBe(NixBuildStatus.TimedOut);
    expect((await c.buildDerivation(loud!, await basic(loud!), { ...NO_LIMITS, maxLogSize: 1000 }, () => {})).status).toBe(NixBuildStatus.LogLimitExceeded);
    const failed = await c.buildDerivation(failing!, await basic(failing!), NO_LIMITS, () => {});
    expect(failed.status).toBe(NixBuildStatus.PermanentFailure);
    expect(failed.errorMsg).toMatch(/exit code 3/);
  });

  it('refuses a NAR that does not match its hash, and a peer that is not a serve process', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [d] = await instantiate(`let ${MK_DRV} in mk { name = "sp-bad-${nonce}"; script = "echo bad > $out"; }`);
    const [out] = await realise([d!]);
    const [info] = await queryPathInfos(hostStore, [out!]);
    const c = await open();
    const wrong = sha256(`not the NAR ${nonce}`);
    const err = await c.addToStoreNar({ ...info!, narHash: wrong }, narChunks(out!)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServeConnectionError);
    expect((err as Error).message).toMatch(/hash mismatch/);
    expect(c.broken).toBe(true);
    await expect(c.queryValidPaths([out!])).rejects.toBeInstanceOf(ServeConnectionError);
    expect(await (await open()).queryValidPaths([out!])).toEqual([]);

    const notServe = spawn('/bin/sh', ['-c', 'echo "Welcome to the machine, it says a lot here"; cat > /dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    await expect(ServeConnection.open(notServe, 'chatty')).rejects.toThrow(/not a serve process/);
    notServe.kill();
    const gone = spawn('/bin/sh', ['-c', 'echo "ssh: connect to host nowhere port 22: Connection refused" >&2; exit 255'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const refused = await ServeConnection.open(gone, 'nowhere').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ServeConnectionError);
    expect((refused as Error).message).toContain('Connection refused');
  });

  it('bounds what a hostile peer may send', async () => {
    const huge = Buffer.alloc(8);
    huge.writeBigUInt64LE(1n << 40n);
    const peer = fakePeer(huge);
    const c = await ServeConnection.open(peer, 'hostile');
    await expect(c.queryValidPaths(['/nix/store/x'])).rejects.toBeInstanceOf(ServeProtocolError);
    peer.kill();

    const long = Buffer.alloc(16);
    long.writeBigUInt64LE(1n, 0); // one path…
    long.writeBigUInt64LE(1n << 30n, 8); // …of a gigabyte
    const peer2 = fakePeer(long);
    const c2 = await ServeConnection.open(peer2, 'hostile');
    await expect(c2.queryValidPaths(['/nix/store/x'])).rejects.toThrow(/too long/);
    peer2.kill();

    const notANar = Buffer.alloc(24);
    notANar.writeBigUInt64LE(13n, 0);
    notANar.write('nix-archive-2', 8);
    const peer3 = fakePeer(notANar);
    const c3 = await ServeConnection.open(peer3, 'hostile');
    const drained = (async () => {
      for await (const _ of c3.dumpStorePath('/nix/store/x'));
    })();
    await expect(drained).rejects.toBeInstanceOf(ServeProtocolError);
    expect(c3.broken).toBe(true);
    peer3.kill();
  });
});
