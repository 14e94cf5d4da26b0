import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHE_COMPRESSIONS, type CacheCompression, formatStoreUri, parseStoreUri, type StoreUri } from '../../src/cache/store-uri.ts';
import { ConfigError } from '../../src/errors/index.ts';
import { formatPublicKey, formatSecretKey, generateSecretKey } from '../../src/nix/signing.ts';

let tmp: string;
let keyFile: string;
let oddKeyFile: string;
let secretText: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'hydrant-store-uri-'));
  secretText = formatSecretKey(generateSecretKey('cache.example.org-1'));
  keyFile = join(tmp, 'sk');
  // A name that needs percent-encoding in a query.
  oddKeyFile = join(tmp, 'odd & key=%.sk');
  writeFileSync(keyFile, `${secretText}\n`);
  writeFileSync(oddKeyFile, secretText);
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function configError(uri: string): ConfigError {
  try {
    parseStoreUri(uri);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error(`expected '${uri}' to be rejected`);
}

describe('parseStoreUri', () => {
  it("applies Nix's defaults", () => {
    const s = parseStoreUri('file:///var/cache/hydra/');
    expect(s).toMatchObject({
      scheme: 'file',
      path: '/var/cache/hydra',
      compression: 'xz',
      compressionLevel: undefined,
      writeNarListing: false,
      lsCompression: 'none',
      logCompression: 'none',
      secretKeyFile: undefined,
      secretKey: undefined,
      parallelCompression: false,
    });
    expect(Object.isFrozen(s)).toBe(true);
  });

  it('parses a file:// store with every option', () => {
    const uri = `file:///srv/cache?compression=zstd&secret-key=${keyFile}&write-nar-listing=1&ls-compression=br&log-compression=br&compression-level=7`;
    const s = parseStoreUri(uri);
    expect(s).toMatchObject({ scheme: 'file', path: '/srv/cache', compression: 'zstd', compressionLevel: 7, writeNarListing: true, lsCompression: 'br', logCompression: 'br', secretKeyFile: keyFile, uri });
    expect(s.secretKey!.name).toBe('cache.example.org-1');
    expect(formatSecretKey(s.secretKey!)).toBe(secretText);
  });

  it('parses an s3:// store', () => {
    const s = parseStoreUri(`s3://nix-cache?region=eu-west-1&endpoint=http://localhost:9000&scheme=http&profile=local&compression=bzip2&narinfo-compression=br&multipart-upload=true&secret-key=${keyFile}`);
    expect(s).toMatchObject({ scheme: 's3', bucket: 'nix-cache', region: 'eu-west-1', endpoint: 'http://localhost:9000', endpointScheme: 'http', profile: 'local', compression: 'bzip2', narinfoCompression: 'br', multipartUpload: true });
    expect(s.secretKey).toBeDefined();
  });

  it('never shows the secret key: not in JSON, inspect, or the canonical URI', () => {
    const s = parseStoreUri(`file:///c?secret-key=${keyFile}`);
    const body = secretText.slice(secretText.indexOf(':') + 1);
    for (const text of [JSON.stringify(s), inspect(s, { depth: 10 }), formatStoreUri(s), String(s)]) {
      expect(text).not.toContain(body);
      expect(text).not.toContain(body.slice(0, 20));
    }
    expect(Object.keys(s)).not.toContain('secretKey');
    expect(formatPublicKey(s.secretKey!.publicKey)).toMatch(/^cache\.example\.org-1:/);
  });

  it('names the URI and the parameter in one error for every problem', () => {
    const uri = 'file:///c?compression=lz4&write-nar-listing=maybe&frobnicate=1&region=us-east-1';
    const e = configError(uri);
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toContain(uri);
    expect(e.message).toMatch(/parameter 'compression': 'lz4' is not one of xz, bzip2, br, zstd, none/);
    expect(e.message).toMatch(/parameter 'write-nar-listing': 'maybe' is not a boolean/);
    expect(e.message).toMatch(/parameter 'frobnicate': unknown parameter/);
    // S3 parameters are not file:// parameters.
    expect(e.message).toMatch(/parameter 'region': unknown parameter for file:\/\/ stores/);
  });

  it.each([
    ['http://cache.example.org', /unsupported scheme 'http:\/\/'/],
    ['file://relative/dir', /not an absolute directory/],
    ['/just/a/path', /expected file:\/\/\//],
    ['s3://bucket/prefix', /not a bucket name/],
    ['file:///c?compression=xz&compression=zstd', /'compression': given more than once/],
    ['file:///c?compression-level=10', /'compression-level': '10' is not an integer in 0\.\.9/],
    ['file:///c?compression=zstd&compression-level=22', /'compression-level': '22'/],
    ['file:///c?compression=none&compression-level=3', /no effect with compression=none/],
    ['file:///c?priority=high', /'priority'/],
    ['file:///c?priority=-0', /'priority': '-0' is not an integer/],
    ['file:///c?secret-key=', /'secret-key': empty path/],
    ['file:///c?secret-key=/nonexistent/sk', /'secret-key': cannot read '\/nonexistent\/sk': ENOENT/],
    ['file:///c?nolabel', /'nolabel' is not name=value/],
    ['file:///c?compression=%zz', /not valid percent-encoding/],
    ['s3://b?scheme=ftp', /'scheme': 'ftp' is not http or https/],
    ['s3://b?endpoint=http://host:9000/path', /'endpoint': 'http:\/\/host:9000\/path' is not host\[:port\]/],
    ['s3://b?endpoint=ftp://host', /'endpoint'/],
    ['s3://b?endpoint=http://host:9000&scheme=https', /'scheme': 'https' contradicts the endpoint/],
    ['s3://b?buffer-size=1024', /'buffer-size': '1024' is not an integer in 5242880\.\.5368709120/],
    ['s3://b?buffer-size=5368709121', /'buffer-size': '5368709121' is not an integer/],
    ['s3://b?multipart-upload=sometimes', /'multipart-upload': 'sometimes' is not a boolean/],
    ['s3://b?region=eu-west-1&aws-region=us-east-1', /'aws-region': is Nix's other name for 'region'/],
  ])('rejects %s', (uri, re) => {
    expect(configError(uri).message).toMatch(re);
  });

  it('rejects a malformed key file without quoting it', () => {
    const bad = join(tmp, 'bad.sk');
    const secretish = 'name:c2VjcmV0LWJ1dC10b28tc2hvcnQ=';
    writeFileSync(bad, secretish);
    const e = configError(`file:///c?secret-key=${bad}`);
    expect(e.message).toMatch(/'secret-key': '.*bad\.sk' does not hold a Nix secret key/);
    expect(e.message).not.toContain('c2VjcmV0');
    // A public key where the secret one belongs.
    writeFileSync(bad, formatPublicKey(generateSecretKey('k').publicKey));
    expect(configError(`file:///c?secret-key=${bad}`).message).toMatch(/does not hold a Nix secret key/);
  });

  it("takes Nix's aws-region for region", () => {
    expect(parseStoreUri('s3://bucket?aws-region=eu-central-1')).toMatchObject({ region: 'eu-central-1' });
  });

  it('accepts the empty compression as none, -1 as the default level, and Nix booleans', () => {
    expect(parseStoreUri('file:///c?compression=').compression).toBe('none');
    expect(parseStoreUri('file:///c?compression-level=-1').compressionLevel).toBeUndefined();
    expect(parseStoreUri('file:///c?write-nar-listing=true').writeNarListing).toBe(true);
    expect(parseStoreUri('file:///c?write-nar-listing=0').writeNarListing).toBe(false);
  });
});

// ------------------------------------------------------------ properties

type Fields = Omit<StoreUri, 'uri' | 'secretKey'>;

const compressionArb = fc.constantFrom<CacheCompression>(...CACHE_COMPRESSIONS);
const LEVELS: Record<CacheCompression, [number, number] | null> = { xz: [0, 9], bzip2: [1, 9], zstd: [1, 19], br: [0, 11], none: null };
const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
/** Directory names with characters that matter to URI parsing (but not '?' or '#', which end the path). */
const pathArb = fc
  .array(fc.string({ unit: fc.constantFrom(...'abcXYZ019._- &=%+:,'), minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 4 })
  .map((segs) => `/${segs.join('/')}`);

function commonArb(): fc.Arbitrary<Omit<Fields, 'scheme' | 'path' | 'bucket' | 'region' | 'endpoint' | 'endpointScheme' | 'profile' | 'narinfoCompression' | 'multipartUpload' | 'bufferSize'>> {
  return compressionArb.chain((compression) =>
    fc.record({
      compression: fc.constant(compression),
      compressionLevel: LEVELS[compression] ? opt(fc.integer({ min: LEVELS[compression]![0], max: LEVELS[compression]![1] })) : fc.constant(undefined),
      parallelCompression: fc.boolean(),
      writeNarListing: fc.boolean(),
      lsCompression: compressionArb,
      logCompression: compressionArb,
      secretKeyFile: fc.constantFrom(undefined, 'plain', 'odd'),
      wantMassQuery: opt(fc.boolean()),
      priority: opt(fc.nat({ max: 1000 })),
    }),
  );
}

const fieldsArb: fc.Arbitrary<Fields> = fc.oneof(
  fc.tuple(commonArb(), pathArb).map(([c, path]) => ({ scheme: 'file' as const, path, ...c })),
  fc
    .tuple(
      commonArb(),
      fc.record({
        bucket: fc.stringMatching(/^[a-z0-9][a-z0-9.-]{2,20}$/),
        region: opt(fc.constantFrom('us-east-1', 'eu-west-1', 'unknown')),
        endpoint: opt(fc.constantFrom('localhost:9000', 'http://minio.local:9000', 's3.example.org')),
        endpointScheme: opt(fc.constantFrom<'http' | 'https'>('http', 'https')),
        profile: opt(fc.constantFrom('default', 'local_nix_store')),
        narinfoCompression: compressionArb,
        multipartUpload: fc.boolean(),
        bufferSize: opt(fc.integer({ min: 5 * 1024 * 1024, max: 1 << 30 })),
      }),
    )
    // An endpoint URL and a different scheme= contradict each other (a rejected URI).
    .filter(([, s3]) => !(s3.endpoint?.includes('://') && s3.endpointScheme && !s3.endpoint.startsWith(`${s3.endpointScheme}://`)))
    .map(([c, s3]) => ({ scheme: 's3' as const, ...s3, ...c })),
);

/** The generator names key files symbolically; the real files exist only at run time. */
function withKeyFile(f: Fields): Fields {
  const k = f.secretKeyFile as string | undefined;
  return { ...f, secretKeyFile: k === 'plain' ? keyFile : k === 'odd' ? oddKeyFile : undefined } as Fields;
}

const FIELD_NAMES = ['compression', 'compression-level', 'parallel-compression', 'write-nar-listing', 'ls-compression', 'log-compression', 'secret-key', 'want-mass-query', 'priority'];

describe('store URI properties', () => {
  it('formatStoreUri then parseStoreUri gives back every field (and the key)', () => {
    fc.assert(
      fc.property(fieldsArb, (raw) => {
        const f = withKeyFile(raw);
        const uri = formatStoreUri({ ...f, uri: '', secretKey: undefined } as StoreUri);
        const parsed = parseStoreUri(uri);
        const { uri: _u, ...rest } = parsed;
        expect(rest).toEqual(f);
        expect(parsed.uri).toBe(uri);
        expect(formatStoreUri(parsed)).toBe(uri);
        expect(parsed.secretKey === undefined).toBe(f.secretKeyFile === undefined);
      }),
      { numRuns: 200 },
    );
  });

  it('rejects unknown parameters and bad values, naming the URI and the parameter', () => {
    const unknownName = fc.stringMatching(/^[a-z][a-z-]{0,14}$/).filter((n) => !FIELD_NAMES.includes(n) && !['region', 'aws-region', 'endpoint', 'scheme', 'profile', 'narinfo-compression', 'multipart-upload', 'buffer-size'].includes(n));
    const badValue = fc.string({ unit: fc.constantFrom(...'abcxyz0123456789-'), minLength: 1, maxLength: 6 });
    const problem = fc.oneof(
      fc.tuple(unknownName, fc.constant('1')),
      fc.tuple(fc.constantFrom('compression', 'ls-compression', 'log-compression'), badValue.filter((v) => !(CACHE_COMPRESSIONS as readonly string[]).includes(v))),
      fc.tuple(fc.constantFrom('write-nar-listing', 'parallel-compression', 'want-mass-query'), badValue.filter((v) => !['1', '0'].includes(v))),
      fc.tuple(fc.constant('priority'), badValue.filter((v) => !/^-?\d+$/.test(v))), // -0 is a valid 0
    );
    fc.assert(
      fc.property(fieldsArb, problem, (raw, [name, value]) => {
        const good = formatStoreUri({ ...withKeyFile(raw), uri: '', secretKey: undefined } as StoreUri);
        // Drop the parameter if present, then add the bad one.
        const [base, query = ''] = good.split('?');
        const kept = query.split('&').filter((p) => p && !p.startsWith(`${name}=`));
        const uri = `${base}?${[...kept, `${name}=${value}`].join('&')}`;
        const e = configError(uri);
        expect(e.message).toContain(`remote store '${uri}'`);
        expect(e.message).toContain(`parameter '${name}'`);
      }),
      { numRuns: 200 },
    );
  });
});
