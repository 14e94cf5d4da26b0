import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { PrivateStore, hostStore } from '../../src/nix/private-store.ts';
import { exportPaths } from '../../src/nix/transfer.ts';
import { NixCommandError } from '../../src/errors/index.ts';
import { parseHash } from '../../src/nix/hash.ts';
import { ServePool } from '../../src/nix/serve-session.ts';
import { instantiate, MK_DRV, realise, runNix, runNixLines } from '../helpers/nix.ts';

describe('queries over nix-store --serve', () => {
  it('answer what the Nix tools answer, and a failed query leaves the pool usable', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [top] = await instantiate(`let ${MK_DRV}
      base = mk { name = "serve-base-${nonce}"; script = "echo base > $out"; };
    in mk { name = "serve-top-${nonce}"; script = "/bin/cat \${base} > $out; echo doc > $doc"; extra = { outputs = [ "out" "doc" ]; }; }`);
    const [out] = await realise([top!]);
    const pool = new ServePool(hostStore, 2);

    const closure = await pool.use((s) => s.queryClosure([top!], true));
    expect(new Set(closure)).toEqual(new Set(await runNixLines('nix-store', ['--query', '--requisites', '--include-outputs', top!])));
    expect(closure).toContain(out);

    const infos = await pool.use((s) => s.queryPathInfos(closure));
    expect(new Set(infos.map((i) => i.path))).toEqual(new Set(closure));
    const byPath = new Map(infos.map((i) => [i.path, i]));
    // Outputs against `nix path-info` (which would take a .drv for its outputs)…
    const outputs = closure.filter((p) => !p.endsWith('.drv'));
    const nix = JSON.parse((await runNix('nix', ['path-info', '--json', ...outputs])).stdout.toString()) as { path: string; narHash: string; narSize: number; references: string[]; deriver?: string; signatures?: string[]; ca?: string }[];
    expect(nix.length).toBe(outputs.length);
    for (const n of nix) {
      const { narHash, ...rest } = byPath.get(n.path)!;
      expect(rest).toEqual({ path: n.path, narSize: n.narSize, references: n.references, deriver: n.deriver ?? null, sigs: n.signatures ?? [], ca: n.ca ?? null });
      expect(parseHash(narHash).equals(parseHash(n.narHash))).toBe(true);
    }
    // …and every path's hash and references against nix-store's queries.
    for (const p of closure) {
      const [hash] = await runNixLines('nix-store', ['--query', '--hash', p]);
      expect(parseHash(byPath.get(p)!.narHash).equals(parseHash(hash!))).toBe(true);
      expect(new Set(byPath.get(p)!.references)).toEqual(new Set(await runNixLines('nix-store', ['--query', '--references', p])));
    }

    const missing = `/nix/store/${'0'.repeat(32)}-missing-${nonce}`;
    expect(await pool.use((s) => s.queryValid([out!, missing]))).toEqual([out]);
    expect(await pool.use((s) => s.queryPathInfos([missing]))).toEqual([]);
    // The closure of an invalid path is an error: the session ends, the pool opens another.
    await expect(pool.use((s) => s.queryClosure([missing], false))).rejects.toBeInstanceOf(NixCommandError);
    expect(await pool.use((s) => s.queryValid([out!]))).toEqual([out]);
    // Concurrent callers share the pool's sessions.
    const many = await Promise.all(Array.from({ length: 8 }, () => pool.use((s) => s.queryValid(closure))));
    for (const m of many) expect(new Set(m)).toEqual(new Set(closure));
  });

  it('imports an export stream however finely it is chunked, in one pipe write per 64 KiB', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [small, big] = await instantiate(`let ${MK_DRV} in [
      (mk { name = "serve-small-${nonce}"; script = "echo small > $out"; })
      (mk { name = "serve-big-${nonce}"; script = "i=0; while [ $i -lt 4000 ]; do echo line-$i-of-a-file-larger-than-one-import-write-of-sixty-four-kib; i=$((i+1)); done > $out"; })
    ]`);
    const outs = await realise([small!, big!]);
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-serve-import-'));
    try {
      const store = await PrivateStore.create(dir);
      const pool = new ServePool(store, 1);
      // The session (and its handshake) first, so only the import's writes are counted.
      await pool.use((s) => s.queryValid([]));
      const writes = vi.spyOn(net.Socket.prototype as unknown as { _writeGeneric(...a: unknown[]): unknown }, '_writeGeneric');
      try {
        for (const [i, out] of outs.entries()) {
          const parts: Buffer[] = [];
          for await (const c of exportPaths(hostStore, [out])) parts.push(Buffer.from(c));
          const whole = Buffer.concat(parts);
          // Small pieces: 7 bytes for the small path, 1 KiB for the big one (over 200 of them).
          const size = i === 0 ? 7 : 1024;
          const pieces = async function* () {
            for (let at = 0; at < whole.length; at += size) yield whole.subarray(at, at + size);
          };
          writes.mockClear();
          await pool.use((s) => s.importExport(pieces()));
          // The command and the stream together, at most one write per 64 KiB (and the last, shorter one).
          expect(writes.mock.calls.length).toBeLessThanOrEqual(Math.floor((8 + whole.length) / (64 * 1024)) + 1);
          await store.runChecked('nix-store', ['--verify-path', out]);
        }
        expect(outs[1]).toBeDefined();
      } finally {
        writes.mockRestore();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
