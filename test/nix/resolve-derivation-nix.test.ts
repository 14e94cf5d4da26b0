/**
 * Resolution, .drv writing, resolved-.drv roots and realisations checked
 * against real Nix 2.8 with ca-derivations: a chain CA (two outputs) → CA →
 * deferred input-addressed is realised by `nix-store --realise`, which
 * prints each resolution it makes ("resolved derivation: 'X' -> 'Y'") and
 * writes Y itself; ours must land on the same Y, byte for byte.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DerivationHasher, derivationStorePath } from '../../src/nix/derivation-paths.ts';
import { type Derivation, derivationName, parseDerivation, serializeDerivation } from '../../src/nix/derivation.ts';
import { PrivateStore, hostStore, type NixStoreHandle } from '../../src/nix/private-store.ts';
import {
  dependentRealisations,
  formatRealisation,
  parseRealisation,
  type Realisation,
  realisationIds,
  realisationSignedBy,
  signRealisation,
} from '../../src/nix/realisation.ts';
import { addResolvedDrvRoot, listResolvedDrvRoots, removeResolvedDrvRoot, resolvedRootsDir } from '../../src/nix/resolved-roots.ts';
import { mustResolve, realisedKey, resolveDerivation } from '../../src/nix/resolve-derivation.ts';
import { formatSecretKey, generateSecretKey } from '../../src/nix/signing.ts';
import { STORE_DIR } from '../../src/nix/store-path.ts';
import { writeDerivationToStore } from '../../src/nix/write-derivation.ts';
import { CA_MK_DRV, runNix, runNixLines } from '../helpers/nix.ts';
import { tempDir } from './util.ts';

const CHAIN = `{ nonce }:
let
  ${CA_MK_DRV}
  a = mk { name = "resolve-ca-a"; script = "echo a-\${nonce} > $out; echo dev > $dev"; extra = ca // { outputs = [ "out" "dev" ]; }; };
  # b's env holds a's placeholders in a value and in a name.
  b = mk {
    name = "resolve-ca-b";
    script = "read x < \${a}; read y < \${a.dev}; echo \${a} $x $y > $out";
    extra = ca // { ref = "\${a.dev}"; "\${builtins.unsafeDiscardStringContext "\${a}"}" = "name-is-a-placeholder"; };
  };
  # Input-addressed but deferred: its output path depends on b's.
  c = mk { name = "resolve-ia-c"; script = "read x < \${b}; echo \${b} $x > $out"; };
  # Structured attributes: the placeholder sits inside __json.
  d = derivation (ca // {
    name = "resolve-ca-d";
    system = builtins.currentSystem;
    builder = "/bin/bash";
    args = [ "-c" "source .attrs.sh; echo \\"$dep\\" > \\\${outputs[out]}" ];
    __structuredAttrs = true;
    dep = "\${b}";
    attrs = { list = [ "\${a.dev}" ]; };
  });
in { inherit a b c d; }
`;

const dirs: string[] = [];
const tmp = (): string => {
  const d = tempDir('hydrant-resolve-');
  dirs.push(d);
  return d;
};

interface Chain {
  a: string;
  b: string;
  c: string;
  /** CA with structured attributes, depending on b and a.dev. */
  d: string;
  cOut: string;
  /** Original .drv → the resolved .drv Nix reported. */
  nixResolved: Map<string, string>;
}

async function realisationsOf(store: NixStoreHandle, drvPath: string): Promise<Realisation[]> {
  const { stdout } = await store.runChecked('nix', ['realisation', 'info', '--json', drvPath]);
  return (JSON.parse(stdout.toString('utf8')) as unknown[]).map((r) => parseRealisation(JSON.stringify(r)));
}

/** drvPath!output → realised path, for every input of `drv`, from the store's realisations. */
async function realisedInputs(drv: Derivation): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  for (const input of drv.inputDrvs.keys()) {
    for (const r of await realisationsOf(hostStore, input)) m.set(realisedKey(input, r.id.split('!')[1]!), `${STORE_DIR}/${r.outPath}`);
  }
  return m;
}

const readDrv = (p: string): Derivation => parseDerivation(readFileSync(p));

async function copyClosure(to: NixStoreHandle, paths: string[]): Promise<void> {
  const closure = await runNixLines('nix-store', ['-qR', ...paths]);
  const { stdout } = await runNix('nix-store', ['--export', ...closure]);
  await to.runChecked('nix-store', ['--import'], { input: stdout });
}

describe('resolving content-addressed derivations against Nix 2.8', () => {
  let chain: Chain;

  beforeAll(async () => {
    const dir = tmp();
    const file = join(dir, 'chain.nix');
    writeFileSync(file, CHAIN);
    const [a, b, c, d] = await runNixLines('nix-instantiate', [file, '--argstr', 'nonce', randomUUID(), '-A', 'a', '-A', 'b', '-A', 'c', '-A', 'd']);
    const { stdout, stderr } = await runNix('nix-store', ['--realise', c!, d!]);
    const nixResolved = new Map<string, string>();
    for (const m of stderr.matchAll(/resolved derivation: '([^']+)' -> '([^']+)'/g)) nixResolved.set(m[1]!, m[2]!);
    chain = { a: a!, b: b!, c: c!, d: d!, cOut: stdout.toString('utf8').trim().split('\n')[0]!, nixResolved };
  });
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('resolves to the very .drv Nix resolved to, byte for byte', async () => {
    expect([...chain.nixResolved.keys()].sort()).toEqual([chain.b, chain.c, chain.d].sort());
    expect(mustResolve(readDrv(chain.a))).toBe(false);
    for (const [orig, nixPath] of chain.nixResolved) {
      const drv = readDrv(orig);
      expect(mustResolve(drv)).toBe(true);
      const res = resolveDerivation(orig, drv, await realisedInputs(drv));
      expect(res.changed).toBe(true);
      expect(res.drv.inputDrvs.size).toBe(0);
      expect(derivationStorePath(res.drv, derivationName(drv, orig))).toBe(nixPath);
      expect(serializeDerivation(res.drv)).toBe(readFileSync(nixPath, 'utf8'));
    }
  });

  it('rewrites placeholders in env names and values, and fills deferred outputs with the path Nix built', async () => {
    const b = readDrv(chain.b);
    const realised = await realisedInputs(b);
    const res = resolveDerivation(chain.b, b, realised);
    const aOut = realised.get(realisedKey(chain.a, 'out'))!;
    expect(res.drv.env.get(aOut)).toBe('name-is-a-placeholder');
    expect(res.drv.env.get('ref')).toBe(realised.get(realisedKey(chain.a, 'dev')));
    // Its own output stays floating, with its placeholder in env.
    expect(res.drv.outputs.get('out')).toEqual(b.outputs.get('out'));
    expect(res.drv.env.get('out')).toBe(b.env.get('out'));

    const c = readDrv(chain.c);
    const resC = resolveDerivation(chain.c, c, await realisedInputs(c));
    expect(resC.drv.outputs.get('out')!.path).toBe(chain.cOut);
    expect(resC.drv.env.get('out')).toBe(chain.cOut);

    const d = readDrv(chain.d);
    const realisedD = await realisedInputs(d);
    const json = JSON.parse(resolveDerivation(chain.d, d, realisedD).drv.env.get('__json')!) as { dep: string; attrs: { list: string[] } };
    expect(json.dep).toBe(realisedD.get(realisedKey(chain.b, 'out')));
    expect(json.attrs).toEqual({ list: [realisedD.get(realisedKey(chain.a, 'dev'))] });
  });

  it("computes the realisation ids and dependencies Nix recorded, of the original and the resolved .drv", async () => {
    const hasher = new DerivationHasher(readDrv);
    for (const [orig, resolvedPath] of chain.nixResolved) {
      const drv = readDrv(orig);
      const name = derivationName(drv, orig);
      const resolved = resolveDerivation(orig, drv, await realisedInputs(drv)).drv;
      const nixOrig = await realisationsOf(hostStore, orig);
      const nixRes = await realisationsOf(hostStore, resolvedPath);
      expect([...(await realisationIds(hasher, drv, name)).values()].sort()).toEqual(nixOrig.map((r) => r.id).sort());
      expect([...(await realisationIds(hasher, resolved, name)).values()].sort()).toEqual(nixRes.map((r) => r.id).sort());
      // The resolved .drv's realisation has no dependencies; the original's has those its output references.
      for (const r of nixRes) expect(r.dependentRealisations).toEqual({});
      const inputClosure: Realisation[] = [];
      const seen = new Set<string>();
      const visit = async (d: string): Promise<void> => {
        for (const input of readDrv(d).inputDrvs.keys()) {
          if (seen.has(input)) continue;
          seen.add(input);
          inputClosure.push(...(await realisationsOf(hostStore, input)));
          await visit(input);
        }
      };
      await visit(orig);
      for (const r of nixOrig) {
        const refs = await runNixLines('nix-store', ['-q', '--references', `${STORE_DIR}/${r.outPath}`]);
        expect(dependentRealisations(inputClosure, refs)).toEqual(r.dependentRealisations);
        expect(Object.keys(r.dependentRealisations).length).toBeGreaterThan(0);
      }
    }
  });

  it('writes the resolved .drv into a private store as Nix writes it: same path, references, content address and reading', async () => {
    const store = await PrivateStore.create(tmp());
    const drv = readDrv(chain.b);
    const res = resolveDerivation(chain.b, drv, await realisedInputs(drv));
    const nixPath = chain.nixResolved.get(chain.b)!;
    await copyClosure(store, res.drv.inputSrcs);
    const path = await writeDerivationToStore(store, res.drv, derivationName(drv, chain.b));
    expect(path).toBe(nixPath);
    const refs = (await store.runChecked('nix-store', ['-q', '--references', path])).stdout.toString().trim().split('\n').sort();
    expect(refs).toEqual([...res.drv.inputSrcs].sort());
    const show = async (s: NixStoreHandle) => JSON.parse((await s.runChecked('nix', ['show-derivation', path])).stdout.toString()) as unknown;
    expect(await show(store)).toEqual(await show(hostStore));
    const info = async (s: NixStoreHandle) => {
      const [i] = JSON.parse((await s.runChecked('nix', ['path-info', '--json', '--derivation', path])).stdout.toString()) as Record<string, unknown>[];
      return { ca: i!.ca, narHash: i!.narHash, narSize: i!.narSize, references: i!.references };
    };
    expect(await info(store)).toEqual(await info(hostStore));
    // Writing it again is a no-op.
    expect(await writeDerivationToStore(store, res.drv, derivationName(drv, chain.b))).toBe(path);
  });

  it('writes a .drv the store does not have into the host store, and Nix reads it back identically', async () => {
    const drv = readDrv(chain.b);
    const res = resolveDerivation(chain.b, drv, await realisedInputs(drv));
    const fresh: Derivation = { ...res.drv, env: new Map([...res.drv.env, ['nonce', randomUUID()]]) };
    const path = await writeDerivationToStore(hostStore, fresh, 'resolve-written');
    expect(path).toBe(derivationStorePath(fresh, 'resolve-written'));
    expect(readFileSync(path, 'utf8')).toBe(serializeDerivation(fresh));
    expect((await runNixLines('nix-store', ['-q', '--references', path])).sort()).toEqual([...fresh.inputSrcs].sort());
    const shown = JSON.parse((await runNix('nix', ['show-derivation', path])).stdout.toString()) as Record<string, { env: Record<string, string> }>;
    expect(shown[path]!.env).toEqual(Object.fromEntries(fresh.env));
  });

  it("keeps a rooted resolved .drv through Nix's garbage collection, and lets it go once unrooted", async () => {
    const store = await PrivateStore.create(tmp());
    const drv = readDrv(chain.b);
    const res = resolveDerivation(chain.b, drv, await realisedInputs(drv));
    await copyClosure(store, res.drv.inputSrcs);
    const hydraRoots = store.realPath('/nix/var/nix/gcroots/per-user/root/hydra-roots');
    const dir = resolvedRootsDir(hydraRoots);
    const path = derivationStorePath(res.drv, derivationName(drv, chain.b));
    await addResolvedDrvRoot(dir, path); // before the write: never unrooted
    await writeDerivationToStore(store, res.drv, derivationName(drv, chain.b));
    expect(await listResolvedDrvRoots(dir)).toEqual([path]);
    const validIn = async (p: string) => (await store.run('nix-store', ['--check-validity', p])).exitCode === 0;
    await store.runChecked('nix-store', ['--gc']);
    expect(await validIn(path)).toBe(true);
    await removeResolvedDrvRoot(dir, path);
    await removeResolvedDrvRoot(dir, path);
    expect(await listResolvedDrvRoots(dir)).toEqual([]);
    await store.runChecked('nix-store', ['--gc']);
    expect(await validIn(path)).toBe(false);
  });

  it('signs a realisation exactly as Nix 2.8 does with secret-key-files', async () => {
    const store = await PrivateStore.create(tmp());
    await copyClosure(store, [chain.c, chain.d]);
    const sk = generateSecretKey('resolve-test-2');
    const keyFile = join(tmp(), 'sk');
    writeFileSync(keyFile, formatSecretKey(sk));
    await store.runChecked('nix-store', ['--realise', chain.c, chain.d], { extraConfig: `secret-key-files = ${keyFile}` });
    let checked = 0;
    for (const drvPath of [chain.a, chain.b, chain.c, chain.d, ...chain.nixResolved.values()]) {
      for (const r of await realisationsOf(store, drvPath)) {
        expect(r.signatures).toHaveLength(1);
        expect(signRealisation(sk, { ...r, signatures: [] })).toEqual(r);
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(6);
  });

  it(".doi files: ours are byte-identical to Nix's, and Nix 2.8 substitutes a CA chain through ours (signed)", async () => {
    const cache = join(tmp(), 'cache');
    await runNix('nix', ['copy', '--to', `file://${cache}`, chain.c]);
    const doiDir = join(cache, 'realisations');
    const files = readdirSync(doiDir);
    expect(files.length).toBeGreaterThanOrEqual(3);
    const sk = generateSecretKey('resolve-test-1');
    for (const f of files) {
      const text = readFileSync(join(doiDir, f), 'utf8');
      const r = parseRealisation(text);
      expect(`${r.id}.doi`).toBe(f);
      expect(formatRealisation(r)).toBe(text);
      const signed = signRealisation(sk, r);
      expect(realisationSignedBy([sk.publicKey], signed)).toBe(true);
      expect(realisationSignedBy([sk.publicKey], { ...signed, outPath: r.outPath.replace(/^./, (ch) => (ch === '0' ? '1' : '0')) })).toBe(false);
      writeFileSync(join(doiDir, f), formatRealisation(signed));
    }
    // A fresh store with the .drv files only: Nix must substitute every output, building nothing.
    const store = await PrivateStore.create(tmp());
    await copyClosure(store, [chain.c]);
    mkdirSync(join(cache, 'log'), { recursive: true });
    const r = await store.runChecked('nix-store', ['--realise', chain.c], { extraConfig: `substituters = file://${cache}\nrequire-sigs = false` });
    expect(r.stdout.toString().trim()).toBe(chain.cOut);
    expect(r.stderr).not.toMatch(/building '/);
    expect(r.stderr).toMatch(/copying path/);
    // Control: without the .doi files the same store setup builds.
    for (const f of files) rmSync(join(doiDir, f));
    const bare = await PrivateStore.create(tmp());
    await copyClosure(bare, [chain.c]);
    const built = await bare.runChecked('nix-store', ['--realise', chain.c], { extraConfig: `substituters = file://${cache}\nrequire-sigs = false` });
    expect(built.stderr).toMatch(/building '/);
  });
});
