import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors/index.ts';
import { parseSecretKey, type SecretKey } from '../nix/signing.ts';

/**
 * `remoteStoreAddr` entries (REFERENCE §5): Nix store URIs of binary caches
 * the runner publishes to, `file:///dir?…` or `s3://bucket?…`, with Nix's
 * parameter names. Parsed once, at configuration time, into frozen objects;
 * a mistake is a ConfigError naming the URI and every bad parameter, since a
 * typo silently falling back to a default would publish an unsigned or
 * differently compressed cache.
 */

/** What a narinfo's `Compression:` may say for caches Hydrant writes. */
export const CACHE_COMPRESSIONS = ['xz', 'bzip2', 'br', 'zstd', 'none'] as const;
export type CacheCompression = (typeof CACHE_COMPRESSIONS)[number];

/** Level ranges of each compressor (src/workers/compression.ts); -1 means "the compressor's default", as in Nix. */
const LEVEL_RANGES: Record<Exclude<CacheCompression, 'none'>, readonly [number, number]> = {
  xz: [0, 9],
  bzip2: [1, 9],
  zstd: [1, 19],
  br: [0, 11],
};

interface StoreUriCommon {
  /** The URI as configured (it names the secret key's file, never the key). */
  readonly uri: string;
  /** NAR compression; Nix's default for binary caches is xz. */
  readonly compression: CacheCompression;
  /** undefined: the compressor's default level. */
  readonly compressionLevel: number | undefined;
  /** xz only: compress with several threads (Nix's `parallel-compression`). */
  readonly parallelCompression: boolean;
  /** Write `<hash>.ls` file listings next to narinfos. */
  readonly writeNarListing: boolean;
  /** Compression of `.ls` files; Nix's default is none. */
  readonly lsCompression: CacheCompression;
  /** Compression of `log/<drv>` files; Nix's default is none. */
  readonly logCompression: CacheCompression;
  /** Path of the signing key (`secret-key=`); the key itself is `secretKey`. */
  readonly secretKeyFile: string | undefined;
  /**
   * The signing key read from `secretKeyFile`. Not enumerable, so that
   * JSON.stringify, util.inspect and loggers never print it.
   */
  readonly secretKey: SecretKey | undefined;
  /** `WantMassQuery` advertised in nix-cache-info; undefined: not written (as Nix does). */
  readonly wantMassQuery: boolean | undefined;
  /** `Priority` advertised in nix-cache-info; undefined: not written (as Nix does). */
  readonly priority: number | undefined;
}

export interface FileStoreUri extends StoreUriCommon {
  readonly scheme: 'file';
  /** Absolute directory of the cache. */
  readonly path: string;
}

/** Parsed only: S3 uploads are not implemented yet. */
export interface S3StoreUri extends StoreUriCommon {
  readonly scheme: 's3';
  readonly bucket: string;
  readonly region: string | undefined;
  /** Endpoint of an S3-compatible service (host[:port] or URL). */
  readonly endpoint: string | undefined;
  /** `scheme=` parameter: http or https towards the endpoint. */
  readonly endpointScheme: 'http' | 'https' | undefined;
  /** AWS configuration profile. */
  readonly profile: string | undefined;
  /** Content-Encoding of narinfos in the bucket. */
  readonly narinfoCompression: CacheCompression;
  readonly multipartUpload: boolean;
  /** Multipart chunk size in bytes. */
  readonly bufferSize: number | undefined;
}

export type StoreUri = FileStoreUri | S3StoreUri;

export interface ParseStoreUriOptions {
  /** Reads the secret key file (default: the filesystem); tests substitute it. */
  readSecretKey?: (path: string) => string;
}

type Scheme = StoreUri['scheme'];

/** Parameters every binary cache takes, and those only S3 takes. */
const COMMON_PARAMS = [
  'compression',
  'compression-level',
  'parallel-compression',
  'write-nar-listing',
  'ls-compression',
  'log-compression',
  'secret-key',
  'want-mass-query',
  'priority',
] as const;
const S3_PARAMS = ['region', 'aws-region', 'endpoint', 'scheme', 'profile', 'narinfo-compression', 'multipart-upload', 'buffer-size'] as const;

function knownParams(scheme: Scheme): readonly string[] {
  return scheme === 's3' ? [...COMMON_PARAMS, ...S3_PARAMS] : COMMON_PARAMS;
}

/** Collects every problem of one URI, so the error names them all at once. */
class Problems {
  readonly list: string[] = [];
  add(param: string | null, msg: string): void {
    this.list.push(param === null ? msg : `parameter '${param}': ${msg}`);
  }
}

function decode(s: string, problems: Problems): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    problems.add(null, `'${s}' is not valid percent-encoding`);
    return null;
  }
}

function parseQuery(query: string, problems: Problems): Map<string, string> {
  const params = new Map<string, string>();
  if (query === '') return params;
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) {
      problems.add(null, `'${part}' is not name=value`);
      continue;
    }
    const name = decode(part.slice(0, eq), problems);
    const value = decode(part.slice(eq + 1), problems);
    if (name === null || value === null) continue;
    // Nix keeps the last of repeated parameters; a repeat is more likely a mistake than intent.
    if (params.has(name)) problems.add(name, 'given more than once');
    else params.set(name, value);
  }
  return params;
}

function isCompression(s: string): s is CacheCompression {
  return (CACHE_COMPRESSIONS as readonly string[]).includes(s);
}

const TRUE = new Set(['true', 'yes', '1']);
const FALSE = new Set(['false', 'no', '0']);

/** Reads parameters by kind, recording problems instead of throwing. */
class Reader {
  constructor(
    private readonly params: Map<string, string>,
    private readonly problems: Problems,
  ) {}

  raw(name: string): string | undefined {
    return this.params.get(name);
  }

  compression(name: string, dflt: CacheCompression): CacheCompression {
    const v = this.params.get(name);
    if (v === undefined) return dflt;
    // Nix spells "no compression" both ways.
    if (v === '') return 'none';
    if (isCompression(v)) return v;
    this.problems.add(name, `'${v}' is not one of ${CACHE_COMPRESSIONS.join(', ')}`);
    return dflt;
  }

  bool(name: string, dflt: boolean): boolean {
    const v = this.params.get(name);
    if (v === undefined) return dflt;
    if (TRUE.has(v)) return true;
    if (FALSE.has(v)) return false;
    this.problems.add(name, `'${v}' is not a boolean (true/false, 1/0)`);
    return dflt;
  }

  optionalBool(name: string): boolean | undefined {
    return this.params.has(name) ? this.bool(name, false) : undefined;
  }

  int(name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.params.get(name);
    if (v === undefined) return undefined;
    // No sign unless negatives are allowed ('-0' is not a priority); '+ 0' turns -0 into 0.
    const n = (min < 0 ? /^-?\d+$/ : /^\d+$/).test(v) ? Number(v) + 0 : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      this.problems.add(name, `'${v}' is not an integer in ${min}..${max === Number.MAX_SAFE_INTEGER ? '' : max}`);
      return undefined;
    }
    return n;
  }

  text(name: string, re: RegExp, what: string): string | undefined {
    const v = this.params.get(name);
    if (v === undefined) return undefined;
    if (re.test(v)) return v;
    this.problems.add(name, `'${v}' is not ${what}`);
    return undefined;
  }
}

function compressionLevel(r: Reader, problems: Problems, compression: CacheCompression): number | undefined {
  const raw = r.raw('compression-level');
  if (raw === undefined || raw === '-1') return undefined;
  if (compression === 'none') {
    problems.add('compression-level', 'has no effect with compression=none');
    return undefined;
  }
  const [min, max] = LEVEL_RANGES[compression];
  return r.int('compression-level', min, max);
}

function readKey(path: string, read: (path: string) => string, problems: Problems): SecretKey | undefined {
  let text: string;
  try {
    text = read(path);
  } catch (e) {
    problems.add('secret-key', `cannot read '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    return undefined;
  }
  try {
    return parseSecretKey(text);
  } catch (e) {
    // The parser's message names at most the key's name, never its bytes.
    problems.add('secret-key', `'${path}' does not hold a Nix secret key (${(e as Error).message})`);
    return undefined;
  }
}

type WithoutKey<T> = T extends unknown ? Omit<T, 'secretKey'> : never;

const BUCKET_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
/** Nix takes host[:port] with `scheme=`; the Rust runner also a URL. Either way, no path (URLs are path-style). */
const ENDPOINT_RE = /^(?:https?:\/\/)?(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?\/?$/;

/**
 * Parses one `remoteStoreAddr` entry. Reads the secret key file (if any) at
 * once, so a missing or malformed key fails configuration rather than the
 * first upload.
 */
export function parseStoreUri(uri: string, options: ParseStoreUriOptions = {}): StoreUri {
  const problems = new Problems();
  const fail = (): never => {
    throw new ConfigError(`remote store '${uri}': ${problems.list.join('; ')}`);
  };
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^?#]*)(?:\?([^#]*))?$/.exec(uri);
  if (!m) {
    problems.add(null, 'expected file:///<absolute dir>?… or s3://<bucket>?…');
    return fail();
  }
  const scheme = m[1]!;
  const location = m[2]!;
  if (scheme !== 'file' && scheme !== 's3') {
    problems.add(null, `unsupported scheme '${scheme}://' (expected file:// or s3://)`);
    return fail();
  }
  const params = parseQuery(m[3] ?? '', problems);
  const known = knownParams(scheme);
  for (const name of params.keys()) {
    if (!known.includes(name)) problems.add(name, `unknown parameter for ${scheme}:// stores (known: ${known.join(', ')})`);
  }

  const r = new Reader(params, problems);
  const compression = r.compression('compression', 'xz');
  const secretKeyFile = r.raw('secret-key');
  if (secretKeyFile === '') problems.add('secret-key', 'empty path');
  const secretKey = secretKeyFile ? readKey(secretKeyFile, options.readSecretKey ?? ((p) => readFileSync(p, 'utf8')), problems) : undefined;
  const common = {
    uri,
    compression,
    compressionLevel: compressionLevel(r, problems, compression),
    parallelCompression: r.bool('parallel-compression', false),
    writeNarListing: r.bool('write-nar-listing', false),
    lsCompression: r.compression('ls-compression', 'none'),
    logCompression: r.compression('log-compression', 'none'),
    secretKeyFile: secretKeyFile || undefined,
    wantMassQuery: r.optionalBool('want-mass-query'),
    priority: r.int('priority', 0),
  };

  let parsed: WithoutKey<StoreUri>;
  if (scheme === 'file') {
    if (!location.startsWith('/')) problems.add(null, `'${location}' is not an absolute directory (write file:///<dir>)`);
    // Nix keeps the text after file:// as the directory; only trailing slashes are dropped.
    parsed = { scheme, path: location.replace(/(?<=.)\/+$/, ''), ...common };
  } else {
    if (!BUCKET_RE.test(location)) problems.add(null, `'${location}' is not a bucket name (s3://<bucket>, no key prefix)`);
    parsed = {
      scheme,
      bucket: location,
      // Nix also spells it aws-region.
      region: r.text('region', /^[A-Za-z0-9-]+$/, 'a region name') ?? r.text('aws-region', /^[A-Za-z0-9-]+$/, 'a region name'),
      endpoint: r.text('endpoint', ENDPOINT_RE, 'host[:port] or http(s)://host[:port]'),
      endpointScheme: r.text('scheme', /^https?$/, 'http or https') as 'http' | 'https' | undefined,
      profile: r.text('profile', /^\S+$/, 'a profile name'),
      narinfoCompression: r.compression('narinfo-compression', 'none'),
      multipartUpload: r.bool('multipart-upload', false),
      // S3's part size limits: at least 5 MiB, at most 5 GiB.
      bufferSize: r.int('buffer-size', 5 * 1024 * 1024, 5 * 1024 ** 3),
      ...common,
    };
  }
  if (params.has('region') && params.has('aws-region')) problems.add('aws-region', "is Nix's other name for 'region': give one of them");
  if (parsed.scheme === 's3' && parsed.endpoint && parsed.endpointScheme) {
    const given = /^(https?):\/\//.exec(parsed.endpoint)?.[1];
    if (given && given !== parsed.endpointScheme) problems.add('scheme', `'${parsed.endpointScheme}' contradicts the endpoint '${parsed.endpoint}'`);
  }
  if (problems.list.length > 0) fail();
  const result = { ...parsed } as StoreUri;
  Object.defineProperty(result, 'secretKey', { value: secretKey, enumerable: false });
  return Object.freeze(result);
}

/** Percent-encodes what would break parsing, keeping paths readable. */
function encodeValue(s: string): string {
  return encodeURIComponent(s).replace(/%2F/g, '/').replace(/%3A/g, ':').replace(/%2C/g, ',');
}

/**
 * A canonical URI for a parsed store: only parameters that differ from the
 * defaults, in a fixed order. parseStoreUri(formatStoreUri(x)) equals x
 * (apart from `uri`).
 */
export function formatStoreUri(s: StoreUri): string {
  const p: [string, string | number | boolean | undefined][] = [];
  if (s.compression !== 'xz') p.push(['compression', s.compression]);
  p.push(['compression-level', s.compressionLevel]);
  if (s.parallelCompression) p.push(['parallel-compression', true]);
  if (s.writeNarListing) p.push(['write-nar-listing', 1]);
  if (s.lsCompression !== 'none') p.push(['ls-compression', s.lsCompression]);
  if (s.logCompression !== 'none') p.push(['log-compression', s.logCompression]);
  p.push(['secret-key', s.secretKeyFile], ['want-mass-query', s.wantMassQuery], ['priority', s.priority]);
  let base: string;
  if (s.scheme === 'file') base = `file://${s.path}`;
  else {
    base = `s3://${s.bucket}`;
    p.push(['region', s.region], ['endpoint', s.endpoint], ['scheme', s.endpointScheme], ['profile', s.profile]);
    if (s.narinfoCompression !== 'none') p.push(['narinfo-compression', s.narinfoCompression]);
    if (s.multipartUpload) p.push(['multipart-upload', true]);
    p.push(['buffer-size', s.bufferSize]);
  }
  const query = p.filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${encodeValue(String(v))}`);
  return query.length ? `${base}?${query.join('&')}` : base;
}

/**
 * Nix's boolean setting values (`BaseSetting<bool>`): true/yes/1, false/no/0;
 * undefined for anything else.
 */
export function storeBool(v: string): boolean | undefined {
  return TRUE.has(v) ? true : FALSE.has(v) ? false : undefined;
}

/** A `substituters` entry with Nix's `trusted` store setting taken out. */
export interface SubstituterUri {
  /** The entry as configured, for messages. */
  readonly uri: string;
  /** `?trusted=` (default false): its paths need no signature by a trusted key. */
  readonly trusted: boolean;
  /** The entry without `trusted`: what the store of its scheme is opened with. */
  readonly storeUri: string;
  /** The parameters left, decoded. */
  readonly params: ReadonlyMap<string, string>;
}

/**
 * Takes Nix's `trusted` store setting out of a `substituters` entry (every
 * kind takes it, as every Nix store does): a bad value is a ConfigError, so a
 * typo never leaves a substituter trusted or untrusted by accident. The
 * other parameters are the scheme's to check.
 */
export function splitSubstituterUri(uri: string): SubstituterUri {
  const problems = new Problems();
  const q = uri.indexOf('?');
  const base = q < 0 ? uri : uri.slice(0, q);
  const params = parseQuery(q < 0 ? '' : uri.slice(q + 1).replace(/#.*$/, ''), problems);
  let trusted = false;
  const raw = params.get('trusted');
  if (raw !== undefined) {
    const b = storeBool(raw);
    if (b === undefined) problems.add('trusted', `'${raw}' is not a boolean (true/false, 1/0)`);
    else trusted = b;
    params.delete('trusted');
  }
  if (problems.list.length > 0) throw new ConfigError(`substituter '${uri}': ${problems.list.join('; ')}`);
  const rest = [...params].map(([k, v]) => `${encodeURIComponent(k)}=${encodeValue(v)}`).join('&');
  return Object.freeze({ uri, trusted, storeUri: rest ? `${base}?${rest}` : base, params });
}
