import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrivateStore, hostStore } from '../../src/nix/private-store.ts';
import type { NixStoreHandle } from '../../src/nix/private-store.ts';
import { NixCommandError } from '../../src/errors/index.ts';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'hydrant-private-store-'));
  dirs.push(d);
  return d;
}

/** Writes a one-derivation expression with unique output contents; returns the file. */
function uniqueExpr(tag: string): string {
  const file = join(tempDir(), 'default.nix');
  writeFileSync(file, `derivation { name = "ps-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${randomUUID()} > $out" ]; }`);
  return file;
}

async function build(store: NixStoreHandle, file: string): Promise<{ drv: string; out: string }> {
  const drv = (await store.runChecked('nix-instantiate', [file])).stdout.toString().trim();
  const out = (await store.runChecked('nix-store', ['--realise', drv])).stdout.toString().trim();
  return { drv, out };
}

async function valid(store: NixStoreHandle, path: string): Promise<boolean> {
  const r = await store.run('nix-store', ['--check-validity', path]);
  return r.exitCode === 0;
}

describe('PrivateStore', () => {
  let a: PrivateStore;
  let b: PrivateStore;
  beforeAll(async () => {
    a = await PrivateStore.create(tempDir());
    b = await PrivateStore.create(tempDir());
  });
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('initialises the Debian layout', () => {
    for (const sub of ['store', 'var/nix/db/db.sqlite', 'var/nix/profiles/per-user/root', 'var/nix/gcroots', 'var/nix/temproots']) {
      expect(existsSync(join(a.nixDir, sub)), sub).toBe(true);
    }
  });

  it('is reopened idempotently', async () => {
    const again = await PrivateStore.create(a.dir);
    expect(again.nixDir).toBe(a.nixDir);
  });

  it('builds into its own store, leaving the host store and other private stores untouched', async () => {
    const { drv, out } = await build(a, uniqueExpr('private'));
    expect(await valid(a, out)).toBe(true);
    expect(await valid(a, drv)).toBe(true);
    // The host store has neither the output nor the .drv...
    expect(await valid(hostStore, out)).toBe(false);
    expect(await valid(hostStore, drv)).toBe(false);
    expect(existsSync(out)).toBe(false);
    // ...but the files are reachable from outside through realPath.
    expect(existsSync(a.realPath(out))).toBe(true);
    // An independent private store does not see it either.
    expect(await valid(b, out)).toBe(false);
    // And the private store's own tools report it (path-info JSON inside the namespace).
    const info = JSON.parse((await a.runChecked('nix', ['path-info', '--json', out])).stdout.toString()) as { path: string; narHash: string }[];
    expect(info[0]?.path).toBe(out);
  });

  it('does not see paths of the host store', async () => {
    const { out } = await build(hostStore, uniqueExpr('host'));
    expect(await valid(hostStore, out)).toBe(true);
    expect(await valid(a, out)).toBe(false);
    expect(await valid(b, out)).toBe(false);
  });

  it('reports exit codes and throws NixCommandError from runChecked', async () => {
    const r = await a.run('nix-store', ['--check-validity', '/nix/store/00000000000000000000000000000000-nope']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/not valid|is not in the Nix store|invalid/);
    await expect(a.runChecked('nix-store', ['--check-validity', '/nix/store/00000000000000000000000000000000-nope'])).rejects.toBeInstanceOf(NixCommandError);
  });

  it('passes arguments verbatim (no shell parsing) and streams stdin', async () => {
    const r = await a.run('/bin/sh', ['-c', 'printf "%s|" "$@"; cat; ls -d /nix/store', 'sh', 'a b', '$(echo x)', "'"], { input: (async function* () { yield Buffer.from('in'); yield Buffer.from('put\n'); })() });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.toString()).toBe("a b|$(echo x)|'|input\n/nix/store\n");
  });

  it('runs concurrent commands against the same store', async () => {
    const files = [uniqueExpr('c1'), uniqueExpr('c2'), uniqueExpr('c3')];
    const built = await Promise.all(files.map((f) => build(a, f)));
    for (const { out } of built) expect(await valid(a, out)).toBe(true);
  });
});
