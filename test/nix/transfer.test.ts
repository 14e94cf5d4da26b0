import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrivateStore, hostStore } from '../../src/nix/private-store.ts';
import type { NixStoreHandle } from '../../src/nix/private-store.ts';
import { exportPaths, importVerified, queryPathInfos } from '../../src/nix/transfer.ts';
import type { ExpectedNar } from '../../src/nix/transfer.ts';
import { NarHashMismatchError, NixFormatError, UnexpectedStorePathError } from '../../src/errors/index.ts';
import { runNix } from '../helpers/nix.ts';
import { exportFixtures } from './export-fixtures.ts';
import type { ExportFixtures } from './export-fixtures.ts';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'hydrant-transfer-'));
  dirs.push(d);
  return d;
}
const freshStore = () => PrivateStore.create(tempDir());

async function collect(gen: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of gen) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function valid(store: NixStoreHandle, path: string): Promise<boolean> {
  return (await store.run('nix-store', ['--check-validity', path])).exitCode === 0;
}

async function expectedFrom(store: NixStoreHandle, paths: string[]): Promise<Map<string, ExpectedNar>> {
  return new Map((await queryPathInfos(store, paths)).map((i) => [i.path, { narHash: i.narHash.toSri(), narSize: i.narSize }]));
}

describe('store path transfer', () => {
  let fx: ExportFixtures;
  let closure: string[];
  beforeAll(async () => {
    fx = await exportFixtures();
    closure = (await runNix('nix-store', ['-qR', fx.app])).stdout.toString().split('\n').filter(Boolean);
  });
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('exportPaths is byte-identical to nix-store --export, references first', async () => {
    const ours = await collect(exportPaths(hostStore, [fx.app, fx.single, fx.dep, fx.drv]));
    const theirs = (await runNix('nix-store', ['--export', fx.app, fx.single, fx.dep, fx.drv])).stdout;
    expect(ours.equals(theirs)).toBe(true);
  });

  it('host → private store: paths become valid there with the same NAR hash', async () => {
    expect(closure).toEqual(expect.arrayContaining([fx.dep, fx.app]));
    const priv = await freshStore();
    for (const p of closure) expect(await valid(priv, p)).toBe(false);
    const expected = await expectedFrom(hostStore, closure);
    const entries = await importVerified(priv, exportPaths(hostStore, [fx.app], { closure: true }), expected);
    expect(entries.map((e) => e.path).sort()).toEqual([...closure].sort());
    const theirs = JSON.parse((await priv.runChecked('nix', ['path-info', '--json', ...closure])).stdout.toString()) as { path: string; narHash: string; narSize: number; references: string[] }[];
    const host = JSON.parse((await runNix('nix', ['path-info', '--json', ...closure])).stdout.toString()) as typeof theirs;
    expect(theirs.map(({ path, narHash, narSize, references }) => ({ path, narHash, narSize, references }))).toEqual(
      host.map(({ path, narHash, narSize, references }) => ({ path, narHash, narSize, references })),
    );
    // Nix re-hashes the imported files and agrees.
    await priv.runChecked('nix-store', ['--verify-path', fx.app]);
    await priv.runChecked('nix-store', ['--verify-path', fx.dep]);

    // A stream past the memory limit is spooled to a file, which is gone afterwards.
    const spoolDir = mkdtempSync(join(tmpdir(), 'hydrant-spool-test-'));
    const other = await freshStore();
    const spilled = await importVerified(other, exportPaths(hostStore, [fx.app], { closure: true }), expected, { spoolDir, spoolMemoryLimit: 64 });
    expect(spilled.map((e) => e.path).sort()).toEqual([...closure].sort());
    await other.runChecked('nix-store', ['--verify-path', fx.app]);
    expect(readdirSync(spoolDir)).toEqual([]);
  });

  it('refuses a tampered NAR with NarHashMismatchError and imports nothing', async () => {
    const priv = await freshStore();
    const bytes = await collect(exportPaths(hostStore, [fx.dep, fx.app]));
    const at = bytes.indexOf('hydrant\nhydrant\n');
    expect(at).toBeGreaterThan(0);
    const tampered = Buffer.from(bytes);
    tampered[at] = 'H'.charCodeAt(0); // still a valid NAR, different contents
    const expected = await expectedFrom(hostStore, [fx.dep, fx.app]);
    const err = await importVerified(priv, [tampered], expected).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(NarHashMismatchError);
    expect((err as NarHashMismatchError).storePath).toBe(fx.dep);
    expect(await valid(priv, fx.dep)).toBe(false);
    expect(await valid(priv, fx.app)).toBe(false);
  });

  it('imports nothing when a later path is unexpected, an expected one is missing, or the stream is malformed', async () => {
    const priv = await freshStore();
    const both = await collect(exportPaths(hostStore, [fx.dep, fx.app]));
    const onlyDep = await expectedFrom(hostStore, [fx.dep]);
    await expect(importVerified(priv, [both], onlyDep)).rejects.toMatchObject({ code: 'UNEXPECTED_STORE_PATH', storePath: fx.app, reason: 'unexpected' });
    const withSingle = await expectedFrom(hostStore, [fx.dep, fx.app, fx.single]);
    const missing = await importVerified(priv, [both], withSingle).then(() => null, (e: unknown) => e);
    expect(missing).toBeInstanceOf(UnexpectedStorePathError);
    expect((missing as UnexpectedStorePathError).reason).toBe('missing');
    const all = await expectedFrom(hostStore, [fx.dep, fx.app]);
    await expect(importVerified(priv, [both.subarray(0, both.length - 8)], all)).rejects.toBeInstanceOf(NixFormatError);
    expect(await valid(priv, fx.dep)).toBe(false);
    expect(await valid(priv, fx.app)).toBe(false);
    // The same stream with the right expectations goes through.
    await importVerified(priv, [both], all);
    expect(await valid(priv, fx.app)).toBe(true);
  });

  it('imports nothing when the check before import refuses a verified stream, and runs it once everything is verified', async () => {
    const priv = await freshStore();
    const both = await collect(exportPaths(hostStore, [fx.dep, fx.app]));
    const all = await expectedFrom(hostStore, [fx.dep, fx.app]);
    await expect(importVerified(priv, [both], all, { beforeImport: () => Promise.reject(new Error('refused by the check')) })).rejects.toThrow('refused by the check');
    expect(await valid(priv, fx.dep)).toBe(false);
    expect(await valid(priv, fx.app)).toBe(false);
    // Not run for a stream that fails verification.
    let checked = 0;
    await expect(importVerified(priv, [both.subarray(0, both.length - 8)], all, { beforeImport: () => void checked++ })).rejects.toBeInstanceOf(NixFormatError);
    expect(checked).toBe(0);
    await importVerified(priv, [both], all, { beforeImport: () => void checked++ });
    expect(checked).toBe(1);
    expect(await valid(priv, fx.app)).toBe(true);
  });

  it('private → private store, the host never involved', async () => {
    const a = await freshStore();
    const b = await freshStore();
    const file = join(tempDir(), 'default.nix');
    writeFileSync(file, `derivation { name = "tx-private"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${randomUUID()} > $out" ]; }`);
    const drv = (await a.runChecked('nix-instantiate', [file])).stdout.toString().trim();
    const out = (await a.runChecked('nix-store', ['--realise', drv])).stdout.toString().trim();
    const expected = await expectedFrom(a, [out, drv]);
    await importVerified(b, exportPaths(a, [out, drv]), expected);
    expect(await valid(b, out)).toBe(true);
    expect(await valid(b, drv)).toBe(true);
    expect(await valid(hostStore, out)).toBe(false);
    const [ia] = await queryPathInfos(a, [out]);
    const [ib] = await queryPathInfos(b, [out]);
    expect(ib!.narHash.toSri()).toBe(ia!.narHash.toSri());
    expect(ib!.deriver).toBe(drv);
  });
});
