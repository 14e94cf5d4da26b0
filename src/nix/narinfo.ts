import { NixFormatError } from '../errors/index.ts';
import { type Hash, parseHash } from './hash.ts';
import { parseStorePath, parseStorePathBaseName, STORE_DIR } from './store-path.ts';

/** A `<hash>.narinfo` file of a binary cache (REFERENCE §6). */
export interface NarInfo {
  storePath: string;
  /** Relative to the cache root, e.g. `nar/<filehash>.nar.xz`. */
  url: string;
  /** `xz`, `bzip2`, `zstd`, `br`, `none`…; Nix assumes `bzip2` when absent. */
  compression: string;
  /** sha256 of the compressed file. */
  fileHash?: Hash;
  fileSize?: number;
  narHash: Hash;
  narSize: number;
  /** Base names (`<hash>-<name>`), not full paths. */
  references: string[];
  /** Base name of the .drv; absent when unknown. */
  deriver?: string;
  system?: string;
  /** `keyname:base64(signature)`; the field may repeat. */
  sigs: string[];
  /** Content address, e.g. `fixed:r:sha256:<base32>` or `text:sha256:<base32>`. */
  ca?: string;
}

type Field = 'StorePath' | 'URL' | 'Compression' | 'FileHash' | 'FileSize' | 'NarHash' | 'NarSize' | 'References' | 'Deriver' | 'System' | 'Sig' | 'CA';
const FIELDS = new Set<string>(['StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize', 'References', 'Deriver', 'System', 'Sig', 'CA']);

function corrupt(whence: string, msg: string, cause?: unknown): NixFormatError {
  return new NixFormatError('narinfo', `${whence}: ${msg}`, cause === undefined ? undefined : { cause });
}

function parseSize(value: string, field: string, whence: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) throw corrupt(whence, `${field} '${value}' is not a non-negative integer`);
  return n;
}

function checkBaseName(value: string, field: string, whence: string): string {
  try {
    parseStorePathBaseName(value);
    return value;
  } catch (e) {
    throw corrupt(whence, `bad ${field} '${value}'`, e);
  }
}

/**
 * Parses a narinfo. Like Nix: `Name: value` lines, unknown fields ignored,
 * Compression defaults to bzip2, StorePath/URL/NarHash/NarSize (non-zero)
 * required. Stricter than Nix: a repeated field other than Sig is an error
 * (Nix silently keeps the last), and every hash and path is checked.
 */
export function parseNarInfo(text: string, whence = 'narinfo', storeDir: string = STORE_DIR): NarInfo {
  const seen = new Map<Field, string>();
  const sigs: string[] = [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  else throw corrupt(whence, 'last line is not terminated by a newline');
  lines.forEach((line, i) => {
    const colon = line.indexOf(':');
    if (colon <= 0) throw corrupt(whence, `line ${i + 1} is not 'Name: value'`);
    const name = line.slice(0, colon);
    const rest = line.slice(colon + 1);
    // Nix writes "References: " even for none; tolerate the bare "References:" too.
    if (rest !== '' && !rest.startsWith(' ')) throw corrupt(whence, `line ${i + 1}: expected ': ' after '${name}'`);
    const value = rest.slice(1);
    if (!FIELDS.has(name)) return;
    if (name === 'Sig') {
      if (!/^[^:\s]+:\S+$/.test(value)) throw corrupt(whence, `bad Sig '${value}'`);
      sigs.push(value);
      return;
    }
    if (seen.has(name as Field)) throw corrupt(whence, `field ${name} appears twice`);
    seen.set(name as Field, value);
  });

  const get = (f: Field) => seen.get(f);
  const required = (f: Field) => {
    const v = get(f);
    if (v === undefined || v === '') throw corrupt(whence, `missing ${f}`);
    return v;
  };
  const hashField = (f: Field, v: string) => {
    try {
      return parseHash(v);
    } catch (e) {
      throw corrupt(whence, `bad ${f} '${v}'`, e);
    }
  };

  const storePath = required('StorePath');
  try {
    parseStorePath(storePath, storeDir);
  } catch (e) {
    throw corrupt(whence, `bad StorePath '${storePath}'`, e);
  }
  const info: NarInfo = {
    storePath,
    url: required('URL'),
    compression: get('Compression') || 'bzip2',
    narHash: hashField('NarHash', required('NarHash')),
    narSize: parseSize(required('NarSize'), 'NarSize', whence),
    references: (get('References') ?? '').split(' ').filter(Boolean).map((r) => checkBaseName(r, 'reference', whence)),
    sigs,
  };
  if (info.narSize === 0) throw corrupt(whence, 'NarSize is 0');
  const fileHash = get('FileHash');
  if (fileHash !== undefined) info.fileHash = hashField('FileHash', fileHash);
  const fileSize = get('FileSize');
  if (fileSize !== undefined) info.fileSize = parseSize(fileSize, 'FileSize', whence);
  const deriver = get('Deriver');
  if (deriver !== undefined && deriver !== 'unknown-deriver') info.deriver = checkBaseName(deriver, 'Deriver', whence);
  const system = get('System');
  if (system) info.system = system;
  const ca = get('CA');
  if (ca !== undefined) {
    if (!/^(text:|fixed:)/.test(ca)) throw corrupt(whence, `bad CA '${ca}'`);
    info.ca = ca;
  }
  return info;
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function checkLine(field: string, value: string): string {
  if (/[\n]/.test(value)) throw new NixFormatError('narinfo', `${field} contains a newline`);
  return value;
}

/**
 * Writes a narinfo the way Nix 2.8 does: its field order, hashes as
 * `sha256:<base32>`, references and signatures sorted and deduplicated.
 */
export function serializeNarInfo(info: NarInfo): string {
  const lines = [
    `StorePath: ${checkLine('StorePath', info.storePath)}`,
    `URL: ${checkLine('URL', info.url)}`,
    `Compression: ${checkLine('Compression', info.compression)}`,
  ];
  if (info.fileHash) lines.push(`FileHash: ${info.fileHash.format('base32')}`);
  if (info.fileSize !== undefined) lines.push(`FileSize: ${info.fileSize}`);
  lines.push(`NarHash: ${info.narHash.format('base32')}`, `NarSize: ${info.narSize}`);
  lines.push(`References: ${[...new Set(info.references)].sort(byString).join(' ')}`);
  if (info.deriver) lines.push(`Deriver: ${checkLine('Deriver', info.deriver)}`);
  if (info.system) lines.push(`System: ${checkLine('System', info.system)}`);
  for (const sig of [...new Set(info.sigs)].sort(byString)) lines.push(`Sig: ${checkLine('Sig', sig)}`);
  if (info.ca) lines.push(`CA: ${checkLine('CA', info.ca)}`);
  return `${lines.join('\n')}\n`;
}

/** Full store paths of the references (what signature fingerprints use). */
export function narInfoReferencePaths(info: NarInfo, storeDir: string = STORE_DIR): string[] {
  return info.references.map((r) => `${storeDir}/${r}`);
}
