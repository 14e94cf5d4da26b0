import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import {
  allowSubstitutes,
  type Derivation,
  derivationName,
  derivationReferences,
  derivationType,
  fixedOutputHash,
  isFixedOutput,
  isFloatingCA,
  outputKind,
  parseDerivation,
  preferLocalBuild,
  requiredSystemFeatures,
  serializeDerivation,
  structuredAttrs,
} from '../../src/nix/derivation.ts';
import { derivationStorePath } from '../../src/nix/derivation-paths.ts';
import { sha256 } from '../../src/nix/hash.ts';
import { storePathName } from '../../src/nix/store-path.ts';
import { runNixLines } from '../helpers/nix.ts';
import { derivationArb } from './arbitraries.ts';
import { DRV_ATTRS as ATTRS, type DrvAttr, type DrvFixtures, instantiateDrvFixtures } from './fixtures.ts';
import { nixFails, nixJson } from './util.ts';
import { assertRoundTrips } from '../helpers/round-trip.ts';

type Attr = DrvAttr;

let drvPath = new Map<Attr, string>();
/** Every .drv in the closure of the test derivations, with bytes and parsed form. */
let drvs: DrvFixtures['drvs'] = new Map();
let shown: Record<string, ShownDerivation> = {};

interface ShownDerivation {
  outputs: Record<string, { path?: string; hashAlgo?: string; hash?: string }>;
  inputSrcs: string[];
  inputDrvs: Record<string, string[]>;
  system: string;
  builder: string;
  args: string[];
  env: Record<string, string>;
}

const get = (a: Attr) => drvs.get(drvPath.get(a)!)!.drv;

beforeAll(async () => {
  ({ drvPath, drvs } = await instantiateDrvFixtures());
  shown = await nixJson<Record<string, ShownDerivation>>('nix', ['show-derivation', ...drvs.keys()]);
});

/** Our model in the shape of `nix show-derivation` (empty output fields left out). */
function asShown(d: Derivation): ShownDerivation {
  const outputs = Object.fromEntries(
    [...d.outputs].map(([n, o]) => [
      n,
      { ...(o.path && { path: o.path }), ...(o.hashAlgo && { hashAlgo: o.hashAlgo }), ...(o.hash && { hash: o.hash }) },
    ]),
  );
  return {
    outputs,
    inputSrcs: d.inputSrcs,
    inputDrvs: Object.fromEntries(d.inputDrvs),
    system: d.system,
    builder: d.builder,
    args: d.args,
    env: Object.fromEntries(d.env),
  };
}

describe('real .drv files from nix-instantiate', () => {
  it('covers a good closure', () => {
    expect(drvs.size).toBeGreaterThanOrEqual(ATTRS.length);
  });

  it('serialize(parse(bytes)) is byte-identical for every .drv', () => {
    for (const { bytes, drv } of drvs.values()) expect(serializeDerivation(drv)).toBe(bytes.toString('utf8'));
  });

  it('parses to what nix show-derivation reports', () => {
    for (const [p, { drv }] of drvs) expect(asShown(drv)).toEqual(shown[p]);
  });

  it("the .drv's own path is its text path over its inputs", () => {
    for (const [p, { drv }] of drvs) {
      expect(derivationStorePath(drv, derivationName(drv, p))).toBe(p);
    }
  });

  it('the references Nix registered for each .drv are its inputs', async () => {
    for (const a of ['top', 'structured', 'deferred'] as const) {
      const refs = await runNixLines('nix-store', ['--query', '--references', drvPath.get(a)!]);
      expect(derivationReferences(get(a))).toEqual([...refs].sort());
    }
  });

  it('keeps escapes, control characters and Unicode', () => {
    const env = get('escapes').env;
    expect(env.get('weird')).toBe('a"b\\c\nd\re\tf$x ctl\u0001\u001f\u007f end');
    expect(env.get('unicode')).toContain('✓ 🚀');
    expect(env.get('odd key')).toBe('v');
    expect(env.get('empty')).toBe('');
    expect(get('oddSystem').system).toBe('x86_64-linux\nwith\ttabs');
    // Nix writes the platform unescaped: a raw newline in the file.
    expect(drvs.get(drvPath.get('oddSystem')!)!.bytes.toString()).toContain('"x86_64-linux\nwith\ttabs"');
  });

  it('classifies outputs', () => {
    expect([...get('multi').outputs.keys()]).toEqual(['dev', 'doc', 'out']);
    expect(derivationType(get('multi'))).toBe('inputAddressed');
    for (const a of ['fodFlat', 'fodRec', 'fodSha1', 'fodSha512'] as const) {
      expect(isFixedOutput(get(a).outputs.get('out')!)).toBe(true);
      expect(derivationType(get(a))).toBe('fixed');
    }
    expect(fixedOutputHash(get('fodFlat').outputs.get('out')!)).toEqual({ method: 'flat', hash: sha256('hello') });
    expect(fixedOutputHash(get('fodRec').outputs.get('out')!).method).toBe('recursive');
    expect(fixedOutputHash(get('fodSha1').outputs.get('out')!).hash.algo).toBe('sha1');
    expect(isFloatingCA(get('caOut').outputs.get('out')!)).toBe(true);
    expect(derivationType(get('caOnCa'))).toBe('floating');
    expect(outputKind(get('structuredDeferred').outputs.get('out')!)).toBe('deferred');
    expect(derivationType(get('deferred'))).toBe('deferred');
  });

  it('reads structured attrs', () => {
    const attrs = structuredAttrs(get('structured'))!;
    expect(attrs.nested).toEqual({ list: [1, 'two', { three: 3.5 }] });
    expect(preferLocalBuild(get('structured'))).toBe(true);
    expect(allowSubstitutes(get('structured'))).toBe(false);
    expect(preferLocalBuild(get('escapes'))).toBe(true);
    expect(allowSubstitutes(get('escapes'))).toBe(true);
    expect(preferLocalBuild(get('multi'))).toBe(false);
    expect(structuredAttrs(get('multi'))).toBeNull();
  });

  it('names derivations from their path, env or __json', () => {
    expect(derivationName(get('multi'), drvPath.get('multi'))).toBe('dt-multi');
    expect(derivationName(get('multi'))).toBe('dt-multi');
    const s = get('structured');
    expect(s.env.has('name')).toBe(false);
    expect(derivationName(s)).toBe('dt-structured');
    expect(storePathName(drvPath.get('structured')!)).toBe('dt-structured.drv');
  });
});

describe('requiredSystemFeatures against what Nix demands', () => {
  /** The feature set Nix says a .drv needs, from its refusal to build it on a machine without features. */
  async function nixRequired(drv: string): Promise<string[]> {
    const stderr = await nixFails('nix-store', ['--realise', drv], 'system-features =');
    const m = /with features \{([^}]*)\} is required to build/.exec(stderr);
    expect(m, stderr).not.toBeNull();
    return m![1]!.split(', ').filter(Boolean).sort();
  }

  it.each(['escapes', 'structured'] as const)('%s', async (a) => {
    expect(requiredSystemFeatures(get(a))).toEqual(await nixRequired(drvPath.get(a)!));
  });

  it('adds ca-derivations when outputs are unknown before building, as Nix 2.8 does', () => {
    expect(requiredSystemFeatures(get('caOut'))).toEqual(['ca-derivations']);
    expect(requiredSystemFeatures(get('structuredDeferred'))).toEqual(['big', 'ca-derivations']);
    expect(requiredSystemFeatures(get('multi'))).toEqual([]);
  });
});

describe('malformed input', () => {
  let good = '';
  beforeAll(() => {
    good = drvs.get(drvPath.get('top')!)!.bytes.toString();
  });
  const cases: [string, (s: string) => string][] = [
    ['truncated', (s) => s.slice(0, s.length - 10)],
    ['trailing data', (s) => `${s}\n`],
    ['a wrong header', (s) => s.replace('Derive(', 'Derivation(')],
    ['a bad input path', (s) => s.replace('[("/nix/store/', '[("/tmp/')],
    ['an unterminated string', () => 'Derive([("out'],
    ['a missing comma', (s) => s.replace('],[', '][')],
    ['an unknown hash algorithm', () => 'Derive([("out","","r:sha3","")],[],[],"s","b",[],[])'],
    ['a fixed output without a path', () => `Derive([("out","","sha256","${sha256('').toBase16()}")],[],[],"s","b",[],[])`],
    ['a bad fixed hash', () => `Derive([("out","/nix/store/${'0'.repeat(32)}-x","sha256","abc")],[],[],"s","b",[],[])`],
    ['no outputs', () => 'Derive([],[],[],"s","b",[],[])'],
    ['a duplicate env var', () => 'Derive([("out","","","")],[],[],"s","b",[],[("a","1"),("a","2")])'],
  ];
  it.each(cases)('rejects %s', (_what, mutate) => {
    expect(() => parseDerivation(mutate(good))).toThrow(NixFormatError);
  });

  it('rejects bytes that are not UTF-8', () => {
    const bytes = Buffer.from('Derive([("out","","","")],[],[],"s","b",[],[("a","\xff")])', 'latin1');
    expect(() => parseDerivation(bytes)).toThrow(/UTF-8/);
  });

  it('refuses to write a quote where Nix writes unescaped', () => {
    const d = parseDerivation('Derive([("out","","","")],[],[],"s","b",[],[])');
    expect(() => serializeDerivation({ ...d, system: 'a"b' })).toThrow(NixFormatError);
  });
});

describe('round trips (property)', () => {
  it('parse(serialize(d)) == d', () => {
    assertRoundTrips(derivationArb, serializeDerivation, parseDerivation, (text) => parseDerivation(Buffer.from(text, 'utf8')));
  });

  it('serialization is canonical: insertion order does not matter', () => {
    fc.assert(
      fc.property(derivationArb, (d) => {
        const reversed: Derivation = {
          ...d,
          outputs: new Map([...d.outputs].reverse()),
          inputDrvs: new Map([...d.inputDrvs].reverse().map(([k, v]) => [k, [...v].reverse()])),
          inputSrcs: [...d.inputSrcs].reverse(),
          env: new Map([...d.env].reverse()),
        };
        expect(serializeDerivation(reversed)).toBe(serializeDerivation(d));
      }),
    );
  });
});
