import { NixFormatError } from '../errors/index.ts';
import type { Derivation, DerivationOutput } from './derivation-type.ts';
import { type HashAlgo, isHashAlgo, parseHash } from './hash.ts';
import { isStorePath, STORE_DIR } from './store-path.ts';

/** The .drv file format of Nix 2.8: `Derive([outputs],[inputDrvs],[inputSrcs],platform,builder,[args],[env])`. */

/**
 * Orders strings by UTF-8 bytes, as Nix's std::map does. JavaScript's `<`
 * compares UTF-16 units, which disagrees when a surrogate meets U+E000..U+FFFF.
 */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      }
      return x - y;
    }
  }
  return a.length - b.length;
}

const sortedKeys = <V>(m: Map<string, V>): string[] => [...m.keys()].sort(compareUtf8);
export const sortedSet = (xs: Iterable<string>): string[] => [...new Set(xs)].sort(compareUtf8);

// ---------------------------------------------------------------- parsing

const utf8 = new TextDecoder('utf-8', { fatal: true });

class AtermReader {
  pos = 0;
  constructor(private readonly s: string) {}

  fail(msg: string): never {
    throw new NixFormatError('derivation', `${msg} at offset ${this.pos}`);
  }

  expect(lit: string): void {
    if (!this.s.startsWith(lit, this.pos)) this.fail(`expected '${lit}'`);
    this.pos += lit.length;
  }

  /** A quoted string; `\n \r \t` are control characters, `\x` is x for anything else. */
  string(): string {
    this.expect('"');
    const s = this.s;
    let out = '';
    let start = this.pos;
    for (let i = this.pos; ; i++) {
      const c = s.charCodeAt(i);
      if (c === 34 /* " */) {
        this.pos = i + 1;
        return out + s.slice(start, i);
      }
      if (c === 92 /* \ */) {
        const e = s[i + 1];
        if (e === undefined) break;
        out += s.slice(start, i) + (e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e);
        start = i + 2;
        i++;
      } else if (Number.isNaN(c)) break;
    }
    this.pos = s.length;
    return this.fail('unterminated string');
  }

  /** `[item,item,…]` */
  list<T>(item: () => T): T[] {
    this.expect('[');
    const out: T[] = [];
    if (this.s[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(item());
      const c = this.s[this.pos++];
      if (c === ']') return out;
      if (c !== ',') {
        this.pos--;
        this.fail("expected ',' or ']'");
      }
    }
  }

  /** `(a,b,…)` of n strings-or-lists, read by the given readers. */
  tuple<T extends unknown[]>(...readers: { [K in keyof T]: () => T[K] }): T {
    this.expect('(');
    const out = readers.map((read, i) => {
      if (i > 0) this.expect(',');
      return read();
    });
    this.expect(')');
    return out as T;
  }

  atEnd(): boolean {
    return this.pos === this.s.length;
  }
}

function insertUnique<V>(map: Map<string, V>, key: string, value: V, what: string): void {
  if (map.has(key)) throw new NixFormatError('derivation', `duplicate ${what} '${key}'`);
  map.set(key, value);
}

function checkPath(p: string, what: string, storeDir: string): void {
  if (!isStorePath(p, storeDir)) throw new NixFormatError('derivation', `bad ${what} path '${p}'`);
}

/** Checks an output triple the way Nix's parser does (which rejects the same inputs). */
function checkOutput(name: string, o: DerivationOutput, storeDir: string): void {
  const bad = (msg: string): never => {
    throw new NixFormatError('derivation', `output '${name}': ${msg}`);
  };
  if (o.hashAlgo === '') {
    if (o.hash !== '') bad('hash without hash algorithm');
    if (o.path !== '') checkPath(o.path, `output '${name}'`, storeDir);
    return;
  }
  const algo = o.hashAlgo.startsWith('r:') ? o.hashAlgo.slice(2) : o.hashAlgo;
  if (!isHashAlgo(algo)) bad(`unknown hash algorithm '${o.hashAlgo}'`);
  if (o.hash === '' || o.hash === 'impure') {
    if (o.path !== '') bad('floating or impure output with a path');
    return;
  }
  checkPath(o.path, `output '${name}'`, storeDir);
  try {
    parseHash(o.hash, algo as HashAlgo);
  } catch (e) {
    bad(`bad output hash '${o.hash}': ${(e as Error).message}`);
  }
}

export interface ParseDerivationOptions {
  storeDir?: string;
}

/** Parses a .drv file (Nix 2.8's `Derive(…)` ATerm). Bytes must be UTF-8. */
export function parseDerivation(input: string | Uint8Array, options: ParseDerivationOptions = {}): Derivation {
  const storeDir = options.storeDir ?? STORE_DIR;
  let text: string;
  if (typeof input === 'string') text = input;
  else {
    try {
      text = utf8.decode(input);
    } catch (e) {
      throw new NixFormatError('derivation', 'not valid UTF-8', { cause: e });
    }
  }
  const r = new AtermReader(text);
  const str = () => r.string();
  const strs = () => r.list(str);

  r.expect('Derive(');
  const outputs = new Map<string, DerivationOutput>();
  for (const [name, path, hashAlgo, hash] of r.list(() => r.tuple<[string, string, string, string]>(str, str, str, str))) {
    const o = { path, hashAlgo, hash };
    checkOutput(name, o, storeDir);
    insertUnique(outputs, name, o, 'output');
  }
  if (outputs.size === 0) r.fail('derivation has no outputs');
  r.expect(',');
  const inputDrvs = new Map<string, string[]>();
  for (const [path, names] of r.list(() => r.tuple<[string, string[]]>(str, strs))) {
    checkPath(path, 'input derivation', storeDir);
    insertUnique(inputDrvs, path, names, 'input derivation');
  }
  r.expect(',');
  const inputSrcs = strs();
  for (const p of inputSrcs) checkPath(p, 'input source', storeDir);
  r.expect(',');
  const system = str();
  r.expect(',');
  const builder = str();
  r.expect(',');
  const args = strs();
  r.expect(',');
  const env = new Map<string, string>();
  for (const [k, v] of r.list(() => r.tuple<[string, string]>(str, str))) insertUnique(env, k, v, 'environment variable');
  r.expect(')');
  if (!r.atEnd()) r.fail('trailing data after derivation');
  return { outputs, inputDrvs, inputSrcs, system, builder, args, env };
}

// ------------------------------------------------------------ serializing

const ESCAPES_RE = /["\\\n\r\t]/g;
const ESCAPES: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function quote(s: string): string {
  return `"${s.replace(ESCAPES_RE, (c) => ESCAPES[c]!)}"`;
}

/**
 * Nix writes output names, paths, hashes and the platform without escaping.
 * We must too, or a platform with a newline would hash differently; a `"` or
 * `\` there cannot be written at all (Nix would write a corrupt .drv).
 */
function raw(s: string, what: string): string {
  if (s.includes('"') || s.includes('\\')) {
    throw new NixFormatError('derivation', `${what} '${s}' contains a quote or backslash, which Nix writes unescaped`);
  }
  return `"${s}"`;
}

export interface SerializeDerivationOptions {
  /** Blank output paths and the env vars named after outputs (hashDerivationModulo). */
  maskOutputs?: boolean;
  /** Replaces inputDrvs (hashDerivationModulo puts input hashes there). */
  inputDrvs?: Map<string, string[]>;
}

/** Writes the canonical ATerm Nix writes: maps and sets sorted by bytes. */
export function serializeDerivation(drv: Derivation, options: SerializeDerivationOptions = {}): string {
  const mask = options.maskOutputs ?? false;
  const parts: string[] = ['Derive(['];
  sortedKeys(drv.outputs).forEach((name, i) => {
    const o = drv.outputs.get(name)!;
    if (i > 0) parts.push(',');
    parts.push('(', raw(name, 'output name'), ',', raw(mask ? '' : o.path, 'output path'), ',');
    parts.push(raw(o.hashAlgo, 'hash algorithm'), ',', raw(o.hash, 'output hash'), ')');
  });
  parts.push('],[');
  const inputDrvs = options.inputDrvs ?? drv.inputDrvs;
  sortedKeys(inputDrvs).forEach((path, i) => {
    if (i > 0) parts.push(',');
    const names = sortedSet(inputDrvs.get(path)!).map((n) => raw(n, 'output name'));
    parts.push('(', raw(path, 'input derivation'), ',[', names.join(','), '])');
  });
  parts.push('],[', sortedSet(drv.inputSrcs).map((p) => raw(p, 'input source')).join(','), '],');
  parts.push(raw(drv.system, 'system'), ',', quote(drv.builder), ',[', drv.args.map(quote).join(','), '],[');
  sortedKeys(drv.env).forEach((k, i) => {
    if (i > 0) parts.push(',');
    const v = mask && drv.outputs.has(k) ? '' : drv.env.get(k)!;
    parts.push('(', quote(k), ',', quote(v), ')');
  });
  parts.push('])');
  return parts.join('');
}
