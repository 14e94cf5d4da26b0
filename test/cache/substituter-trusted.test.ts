import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { parseStoreUri, splitSubstituterUri } from '../../src/cache/store-uri.ts';
import { Substituter } from '../../src/cache/substituter.ts';
import { parseServeUri } from '../../src/cache/serve-source.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { ConfigError, NarHashMismatchError, SubstituteUntrustedError } from '../../src/errors/index.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { createLogger } from '../../src/util/logger.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { buildFixtures, generateKey, tempDir, type Fixtures } from './fixtures.ts';
import { serveDirectory, type DirectoryServer } from '../helpers/directory-server.ts';

/**
 * `?trusted=1` on file:// and http(s):// substituters means what it means on
 * ssh:// ones (Nix's `trusted` store setting): a path without a signature by
 * a key of trustedPublicKeys is accepted from a trusted cache and refused
 * from any other, while NAR hashes are checked either way. One directory
 * cache written by Hydrant's own cache code holds a signed closure (user →
 * tree) and two unsigned paths (single; self, whose NAR is then corrupted);
 * it is read as file:// and through an in-process HTTP server.
 */
let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let server: DirectoryServer;
let httpUrl: string;
let dir: string;
let publicKey: string;
const queries: string[] = [];

beforeAll(async () => {
  tmp = tempDir('hydrant-subst-trusted-');
  pool = new WorkerPool({ threads: 2 });
  let key: { secretFile: string; publicKey: string };
  [fx, key] = await Promise.all([buildFixtures(tmp), generateKey(tmp, 'hydrant-trusted-1')]);
  publicKey = key.publicKey;
  dir = join(tmp, 'cache');
  const signed = await BinaryCache.open(`file://${dir}?compression=zstd&secret-key=${key.secretFile}`, pool);
  await uploadClosure(signed, [fx.paths.user]);
  await signed.close();
  const unsigned = await BinaryCache.open(`file://${dir}?compression=none`, pool);
  await uploadClosure(unsigned, [fx.paths.single, fx.paths.self]);
  await unsigned.close();
  // self's NAR, same length, one byte of content changed: its narinfo still announces the old hash.
  const info = readFileSync(join(dir, `${hashPart(fx.paths.self)}.narinfo`), 'utf8');
  const narFile = join(dir, /^URL: (.*)$/m.exec(info)![1]!);
  const nar = readFileSync(narFile);
  // (a byte of the file's contents, which hold self's own path: the NAR stays well-formed)
  const at = nar.indexOf(fx.paths.self) + '/nix/store/'.length;
  nar[at] = nar[at] === 0x61 ? 0x62 : 0x61;
  writeFileSync(narFile, nar);
  server = await serveDirectory(dir, { seen: (u) => queries.push(u) });
  httpUrl = server.url;
});

afterAll(async () => {
  await server?.close();
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

function hashPart(p: string): string {
  return p.slice('/nix/store/'.length, '/nix/store/'.length + 32);
}

async function open(url: string, store: PrivateStore): Promise<Substituter> {
  return Substituter.open({
    urls: [url], trustedPublicKeys: [publicKey], pool, store, log: createLogger({ level: 'silent' }),
    queryValid: async (paths) => {
      const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
      const invalid = new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
      return new Set(paths.filter((p) => !invalid.has(p)));
    },
  });
}

async function valid(store: PrivateStore, paths: string[]): Promise<boolean> {
  const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
  return r.stdout.toString('utf8') === '';
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a refusal');
}

const kinds = [
  { kind: 'file://', base: () => `file://${dir}` },
  { kind: 'http://', base: () => httpUrl },
];

describe.each(kinds)('a $kind substituter', ({ base }) => {
  it.each([
    { query: '', trusted: false },
    { query: '?trusted=0', trusted: false },
    { query: '?trusted=1&priority=40', trusted: true },
  ])('with "$query": signed paths in, unsigned ones only when trusted, corrupt NARs never', async ({ query, trusted }) => {
    const store = await PrivateStore.create(join(tmp, `store-${Math.random().toString(36).slice(2)}`));
    const s = await open(`${base()}${query}`, store);
    try {
      // Signed by a trusted key: accepted whether or not the cache is trusted.
      expect(await s.substitute([fx.paths.user])).toBe(true);
      expect(await valid(store, [fx.paths.user, fx.paths.tree])).toBe(true);

      // Unsigned: only from a trusted cache.
      if (trusted) {
        expect(await s.substitute([fx.paths.single])).toBe(true);
        expect(await valid(store, [fx.paths.single])).toBe(true);
      } else {
        const e = await rejection(s.substitute([fx.paths.single]));
        expect(e).toBeInstanceOf(SubstituteUntrustedError);
        expect((e as SubstituteUntrustedError).storePath).toBe(fx.paths.single);
        expect(await valid(store, [fx.paths.single])).toBe(false);
      }

      // Unsigned and corrupt: a trusted cache skips the signature, never the NAR hash.
      const e = await rejection(s.substitute([fx.paths.self]));
      expect(e).toBeInstanceOf(trusted ? NarHashMismatchError : SubstituteUntrustedError);
      expect(await valid(store, [fx.paths.self])).toBe(false);
    } finally {
      await s.close();
    }
  });
});

describe('substituter URIs', () => {
  it('send no store setting to the HTTP server', () => {
    expect(queries.length).toBeGreaterThan(0);
    expect(queries.filter((q) => q.includes('?'))).toEqual([]);
  });

  it('take trusted out of every kind, with Nix\'s boolean values', () => {
    for (const [v, b] of [['1', true], ['true', true], ['yes', true], ['0', false], ['false', false], ['no', false]] as const) {
      expect(splitSubstituterUri(`https://c.example.org?trusted=${v}`).trusted).toBe(b);
      expect(parseServeUri(`ssh://peer?trusted=${v}`).trusted).toBe(b);
    }
    const s3 = splitSubstituterUri('s3://bucket?region=eu-west-1&trusted=1&endpoint=http://127.0.0.1:9000');
    expect(s3.trusted).toBe(true);
    expect(s3.storeUri).toBe('s3://bucket?region=eu-west-1&endpoint=http://127.0.0.1:9000');
    // What is left is remoteStoreAddr's syntax, which the S3 cache is opened with.
    expect(parseStoreUri(s3.storeUri)).toMatchObject({ scheme: 's3', bucket: 'bucket', region: 'eu-west-1', endpoint: 'http://127.0.0.1:9000' });
    expect(splitSubstituterUri('file:///srv/c').trusted).toBe(false);
  });

  it('keep every other parameter, decoded and in order, whatever the trusted value and its place', () => {
    const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,11}$/).filter((n) => n !== 'trusted');
    const value = fc.string({ maxLength: 12 });
    fc.assert(
      fc.property(fc.uniqueArray(fc.tuple(name, value), { selector: ([k]) => k, maxLength: 6 }), fc.option(fc.constantFrom('1', 'true', 'yes', '0', 'false', 'no')), fc.nat(), (params, trusted, at) => {
        const list = params.map(([k, v]) => `${k}=${encodeURIComponent(v)}`);
        if (trusted !== null) list.splice(at % (list.length + 1), 0, `trusted=${trusted}`);
        const uri = `https://cache.example.org/sub${list.length ? `?${list.join('&')}` : ''}`;
        const u = splitSubstituterUri(uri);
        expect(u.trusted).toBe(trusted !== null && ['1', 'true', 'yes'].includes(trusted));
        expect([...u.params]).toEqual(params);
        // What is left parses back to the same parameters, without trusted.
        expect([...splitSubstituterUri(u.storeUri).params]).toEqual(params);
        expect(u.storeUri.startsWith('https://cache.example.org/sub')).toBe(true);
        expect(u.storeUri).not.toMatch(/[?&]trusted=/);
      }),
    );
  });

  it('refuse a bad trusted value and unknown parameters at open', async () => {
    const store = { } as PrivateStore;
    for (const url of [`file://${dir}?trusted=maybe`, `${httpUrl}?trusted=2`, 'ssh://peer?trusted=sure', `file://${dir}?compresion=xz`, `${httpUrl}?secret-key=/k`]) {
      const e = await rejection(open(url, store));
      expect(e, url).toBeInstanceOf(ConfigError);
      expect(String((e as Error).message), url).toContain(url);
    }
  });
});
