import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hostStore } from '../../src/nix/private-store.ts';
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
});
