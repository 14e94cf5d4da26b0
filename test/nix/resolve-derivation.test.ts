/**
 * Properties of derivation resolution (src/nix/resolve-derivation.ts) on
 * random derivations, its failures on hostile input, the worker-pool task,
 * and the .doi parser on hostile input. Agreement with real Nix is in
 * resolve-derivation-nix.test.ts.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DerivationResolveError, HydrantError, NixFormatError } from '../../src/errors/index.ts';
import { downstreamPlaceholder, hashPlaceholder } from '../../src/nix/derivation-paths.ts';
import { type Derivation, derivationType, serializeDerivation } from '../../src/nix/derivation.ts';
import { formatRealisation, parseRealisation, type Realisation } from '../../src/nix/realisation.ts';
import { addResolvedDrvRoot, listResolvedDrvRoots, removeResolvedDrvRoot, resolvedRootsDir } from '../../src/nix/resolved-roots.ts';
import { mustResolve, realisedKey, realisedOutputs, resolveDerivation, type Resolution } from '../../src/nix/resolve-derivation.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { atermTextArb, derivationArb, drvPathArb, hashPartArb, storePathArb } from './arbitraries.ts';

interface Case {
  drvPath: string;
  drv: Derivation;
  realised: Map<string, string>;
  placeholders: string[];
}

const keysOf = (drv: Derivation): [string, string][] => [...drv.inputDrvs].flatMap(([p, outs]) => outs.map((o) => [p, o] as [string, string]));

/** Text mixing random ATerm text with the given placeholders. */
const textWith = (placeholders: string[]): fc.Arbitrary<string> =>
  placeholders.length === 0
    ? atermTextArb
    : fc.array(fc.oneof(atermTextArb, fc.constantFrom(...placeholders)), { maxLength: 6 }).map((xs) => xs.join(''));

/** A random derivation whose builder, args and env (names and values) hold its inputs' placeholders, with every input realised. */
const caseArb: fc.Arbitrary<Case> = fc.tuple(derivationArb, drvPathArb).chain(([drv, drvPath]) => {
  const keys = keysOf(drv);
  const placeholders = keys.map(([p, o]) => downstreamPlaceholder(p, o));
  const text = textWith(placeholders);
  return fc
    .record({
      builder: text,
      args: fc.array(text, { maxLength: 4 }),
      env: fc.uniqueArray(fc.tuple(text, text), { maxLength: 6, selector: ([k]) => k }),
      paths: fc.tuple(...keys.map(() => storePathArb)),
    })
    .map(({ builder, args, env, paths }) => ({
      drvPath,
      drv: { ...drv, builder, args, env: new Map([...drv.env, ...env]) },
      realised: new Map(keys.map(([p, o], i) => [realisedKey(p, o), paths[i]!])),
      placeholders,
    }));
});

/** Output names with characters a store path name cannot hold make deferred outputs unfillable, in Nix too. */
const fillable = (c: Case): boolean => derivationType(c.drv) !== 'deferred' || [...c.drv.outputs.keys()].every((n) => /^[A-Za-z0-9+\-._?=]+$/.test(n));

const IN_DRV = '/nix/store/00000000000000000000000000000000-in.drv';

/** A floating content-addressed derivation taking IN_DRV's `out`, with `fields` over its defaults. */
const floatingOnInput = (fields: Partial<Derivation> = {}): Derivation => ({
  outputs: new Map([['out', { path: '', hashAlgo: 'r:sha256', hash: '' }]]),
  inputDrvs: new Map([[IN_DRV, ['out']]]),
  inputSrcs: [],
  system: 's',
  builder: 'b',
  args: [],
  env: new Map(),
  ...fields,
});

const strings = (d: Derivation): string[] => [d.builder, ...d.args, ...d.env.keys(), ...d.env.values()];

describe('resolveDerivation', () => {
  it('leaves no placeholder of a realised input, no input derivation, and every realised path among the sources', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        fc.pre(fillable(c));
        const { drv, rewrites } = resolveDerivation(c.drvPath, c.drv, c.realised);
        expect(drv.inputDrvs.size).toBe(0);
        for (const p of c.placeholders) for (const s of strings(drv)) expect(s.includes(p)).toBe(false);
        expect(new Set(drv.inputSrcs)).toEqual(new Set([...c.drv.inputSrcs, ...c.realised.values()]));
        expect(new Set(rewrites.keys())).toEqual(new Set(c.placeholders));
        for (const [name, o] of drv.outputs) if (o.path === '') expect(c.drv.outputs.get(name)).toEqual(o);
      }),
      { numRuns: 300 },
    );
  });

  it('is idempotent: a resolved derivation resolves to itself, unchanged', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        fc.pre(fillable(c));
        const once = resolveDerivation(c.drvPath, c.drv, c.realised);
        const twice = resolveDerivation(c.drvPath, once.drv, c.realised);
        expect(twice.changed).toBe(false);
        expect(serializeDerivation(twice.drv)).toBe(serializeDerivation(once.drv));
        expect(once.changed).toBe(c.drv.inputDrvs.size > 0 || serializeDerivation(once.drv) !== serializeDerivation(c.drv));
      }),
      { numRuns: 300 },
    );
  });

  it('keeps the placeholders of its own floating outputs', () => {
    const input = IN_DRV;
    const ph = downstreamPlaceholder(input, 'out');
    const drv = floatingOnInput({
      system: 'x86_64-linux',
      builder: `${ph}/bin/sh`,
      args: ['-c', `cp ${ph} $out`],
      env: new Map([['out', hashPlaceholder('out')], ['dep', ph]]),
    });
    const path = '/nix/store/11111111111111111111111111111111-in';
    const r = resolveDerivation('/nix/store/22222222222222222222222222222222-me.drv', drv, new Map([[realisedKey(input, 'out'), path]]));
    expect(r.changed).toBe(true);
    expect(r.drv.builder).toBe(`${path}/bin/sh`);
    expect(r.drv.args).toEqual(['-c', `cp ${path} $out`]);
    expect(r.drv.env).toEqual(new Map([['out', hashPlaceholder('out')], ['dep', path]]));
    expect(r.drv.inputSrcs).toEqual([path]);
  });

  it('gives an env name two names rewrite to the value of the first in byte order, as Nix does', () => {
    const input = IN_DRV;
    const ph = downstreamPlaceholder(input, 'out');
    const path = '/nix/store/11111111111111111111111111111111-in';
    const drv = floatingOnInput({ env: new Map([[path, 'literal'], [ph, 'from-placeholder']]) });
    const first = ph < path ? 'from-placeholder' : 'literal';
    expect(resolveDerivation('/nix/store/22222222222222222222222222222222-me.drv', drv, new Map([[realisedKey(input, 'out'), path]])).drv.env).toEqual(
      new Map([[path, first]]),
    );
  });

  it('refuses an input output with no realised path, with a stable code', () => {
    fc.assert(
      fc.property(
        caseArb.filter((c) => c.realised.size > 0),
        fc.nat(),
        (c, i) => {
          const keys = [...c.realised.keys()];
          const missing = keys[i % keys.length]!;
          const realised = new Map(c.realised);
          realised.delete(missing);
          let err: unknown;
          try {
            resolveDerivation(c.drvPath, c.drv, realised);
          } catch (e) {
            err = e;
          }
          expect(err).toBeInstanceOf(DerivationResolveError);
          expect((err as DerivationResolveError).code).toBe('DERIVATION_RESOLVE');
          expect((err as DerivationResolveError).reason).toBe('unrealised');
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses a realised path that is not a store path, and ignores entries for outputs it does not use', () => {
    const input = IN_DRV;
    const drv = floatingOnInput();
    const me = '/nix/store/22222222222222222222222222222222-me.drv';
    for (const bad of ['/etc/passwd', '/nix/store/../etc', 'relative', `${downstreamPlaceholder(input, 'out')}`]) {
      expect(() => resolveDerivation(me, drv, new Map([[realisedKey(input, 'out'), bad]]))).toThrow(
        expect.objectContaining({ code: 'DERIVATION_RESOLVE', reason: 'bad-path', inputDrv: input, outputName: 'out' }),
      );
    }
    const ok = new Map([
      [realisedKey(input, 'out'), '/nix/store/11111111111111111111111111111111-in'],
      [realisedKey(input, 'dev'), '/etc/not-used'],
      [realisedKey('/nix/store/33333333333333333333333333333333-other.drv', 'out'), '/nix/store/44444444444444444444444444444444-other'],
    ]);
    expect(resolveDerivation(me, drv, ok).drv.inputSrcs).toEqual(['/nix/store/11111111111111111111111111111111-in']);
  });

  it('takes its map from the outputs the runner knows, leaving out those without a path', () => {
    const a = '/nix/store/00000000000000000000000000000000-a.drv';
    const m = realisedOutputs([[a, [['out', '/nix/store/11111111111111111111111111111111-a'], ['dev', null]]]]);
    expect(m).toEqual(new Map([[`${a}!out`, '/nix/store/11111111111111111111111111111111-a']]));
  });

  it('is required for floating, deferred and impure derivations with inputs only', () => {
    const base = (out: { path: string; hashAlgo: string; hash: string }, inputs: boolean): Derivation =>
      floatingOnInput({ outputs: new Map([['out', out]]), ...(inputs ? {} : { inputDrvs: new Map() }) });
    const ia = { path: '/nix/store/11111111111111111111111111111111-x', hashAlgo: '', hash: '' };
    const fixed = { ...ia, hashAlgo: 'sha256', hash: '0'.repeat(64) };
    const floating = { path: '', hashAlgo: 'r:sha256', hash: '' };
    const deferred = { path: '', hashAlgo: '', hash: '' };
    const impure = { path: '', hashAlgo: 'r:sha256', hash: 'impure' };
    expect([ia, fixed, floating, deferred, impure].map((o) => mustResolve(base(o, true)))).toEqual([false, false, true, true, true]);
    expect([ia, fixed, floating, deferred, impure].map((o) => mustResolve(base(o, false)))).toEqual([false, false, false, false, false]);
  });
});

describe('resolveDerivation on the worker pool', () => {
  let pool: WorkerPool;
  // WorkerPool has no method for this task yet; its generic runner is what such a method calls.
  const run = <T>(name: string, task: object): Promise<T> => (pool as unknown as { run(n: string, t: object): Promise<T> }).run(name, task);
  beforeAll(() => {
    pool = new WorkerPool({ threads: 1 });
  });
  afterAll(async () => {
    await pool.close();
  });

  it('resolves in a worker as on the main thread', async () => {
    const cases = fc.sample(caseArb.filter(fillable), { numRuns: 40, seed: 13 });
    const one = await run<Resolution>('resolveDerivation', cases[0]!);
    expect(one).toEqual(resolveDerivation(cases[0]!.drvPath, cases[0]!.drv, cases[0]!.realised));
    const many = await run<Resolution[]>('resolveDerivations', { items: cases });
    expect(many).toEqual(cases.map((c) => resolveDerivation(c.drvPath, c.drv, c.realised)));
  });

  it('brings a resolution failure back as the same error kind', async () => {
    const c = fc.sample(caseArb.filter((x) => x.realised.size > 0), { numRuns: 1, seed: 7 })[0]!;
    const err = await run('resolveDerivation', { ...c, realised: new Map() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DerivationResolveError);
    expect(err).toBeInstanceOf(HydrantError);
    expect((err as DerivationResolveError).code).toBe('DERIVATION_RESOLVE');
  });
});

describe('realisation .doi bodies', () => {
  const idArb = fc
    .tuple(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.stringMatching(/^[a-z][a-z0-9-]{0,7}$/))
    .map(([h, o]) => `sha256:${Buffer.from(h).toString('hex')}!${o}`);
  const baseArb = fc.tuple(hashPartArb, fc.stringMatching(/^[a-z][a-z0-9.-]{0,10}$/)).map(([h, n]) => `${h}-${n}`);
  const realisationArb: fc.Arbitrary<Realisation> = fc.record({
    id: idArb,
    outPath: baseArb,
    signatures: fc.uniqueArray(fc.stringMatching(/^[a-z]{1,8}:[A-Za-z0-9+/]{86}==$/), { maxLength: 3 }).map((s) => s.sort()),
    dependentRealisations: fc.dictionary(idArb, baseArb, { maxKeys: 3 }),
  });

  it('round-trip, with keys and signatures in the order Nix writes them', () => {
    fc.assert(
      fc.property(realisationArb, (r) => {
        const text = formatRealisation(r);
        expect(parseRealisation(text)).toEqual(r);
        expect(formatRealisation(parseRealisation(text))).toBe(text);
        expect(Object.keys(JSON.parse(text) as object)).toEqual(['dependentRealisations', 'id', 'outPath', 'signatures']);
      }),
    );
  });

  it('refuse what Nix 2.8 would not read', () => {
    const ok = { id: `sha256:${'a'.repeat(64)}!out`, outPath: `${'0'.repeat(32)}-x` };
    for (const bad of [
      'not json',
      '[]',
      JSON.stringify({ outPath: ok.outPath }),
      JSON.stringify({ id: ok.id }),
      JSON.stringify({ ...ok, id: 'sha256:zz!out' }),
      JSON.stringify({ ...ok, outPath: '/nix/store/x' }),
      JSON.stringify({ ...ok, signatures: 'sig' }),
      JSON.stringify({ ...ok, dependentRealisations: { bad: ok.outPath } }),
    ]) {
      expect(() => parseRealisation(bad), bad).toThrow(NixFormatError);
    }
    expect(parseRealisation(JSON.stringify(ok))).toEqual({ ...ok, signatures: [], dependentRealisations: {} });
  });
});

describe('resolved .drv roots', () => {
  it('are files named after the .drv, refused for anything but a top-level .drv path, listed without strangers', async () => {
    const base = mkdtempSync(join(tmpdir(), 'hydrant-resolved-roots-'));
    try {
      const dir = resolvedRootsDir(join(base, 'hydra-roots'));
      expect(dir).toBe(join(base, 'hydrant-resolved-roots'));
      expect(await listResolvedDrvRoots(dir)).toEqual([]);
      const drv = '/nix/store/00000000000000000000000000000000-x.drv';
      await addResolvedDrvRoot(dir, drv);
      await addResolvedDrvRoot(dir, drv);
      expect(readdirSync(dir)).toEqual(['00000000000000000000000000000000-x.drv']);
      for (const bad of ['/nix/store/../etc/passwd.drv', '/nix/store/00000000000000000000000000000000-x', '/tmp/x.drv', '/nix/store/00000000000000000000000000000000-x.drv/y']) {
        await expect(addResolvedDrvRoot(dir, bad), bad).rejects.toBeInstanceOf(NixFormatError);
      }
      writeFileSync(join(dir, 'not-a-root'), '');
      expect(await listResolvedDrvRoots(dir)).toEqual([drv]);
      await removeResolvedDrvRoot(dir, drv);
      expect(await listResolvedDrvRoots(dir)).toEqual([]);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
