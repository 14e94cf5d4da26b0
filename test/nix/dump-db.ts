/**
 * `nix-store --dump-db PATHS` output (Nix's "validity registration" text):
 * per path, lines: path, NAR hash (base16 SHA-256, no prefix), NAR size,
 * deriver (empty when unknown), reference count, references. Unlike
 * `nix path-info`, it treats a .drv argument as the .drv itself (path-info
 * takes it to mean its outputs), so tests use it as an oracle independent of
 * the serve sessions Hydrant queries.
 */
import { NixFormatError } from '../../src/errors/index.ts';
import { Hash } from '../../src/nix/hash.ts';
import { parseStorePath } from '../../src/nix/store-path.ts';

export interface DumpDbEntry {
  path: string;
  narHash: Hash;
  narSize: number;
  deriver: string | null;
  references: string[];
}

export function parseDumpDb(text: string): DumpDbEntry[] {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const out: DumpDbEntry[] = [];
  let i = 0;
  const next = (what: string): string => {
    const l = lines[i++];
    if (l === undefined) throw new NixFormatError('nix-store --dump-db', `truncated: missing ${what}`);
    return l;
  };
  const storePath = (s: string, what: string): string => {
    try {
      parseStorePath(s);
    } catch (e) {
      throw new NixFormatError('nix-store --dump-db', `${what} is not a store path: ${JSON.stringify(s)}`, { cause: e });
    }
    return s;
  };
  const count = (s: string, what: string): number => {
    if (!/^\d+$/.test(s)) throw new NixFormatError('nix-store --dump-db', `${what} is not a number: ${JSON.stringify(s)}`);
    return Number(s);
  };
  while (i < lines.length) {
    const path = storePath(next('path'), 'path');
    const hex = next('NAR hash');
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new NixFormatError('nix-store --dump-db', `bad NAR hash for ${path}: ${JSON.stringify(hex)}`);
    const narSize = count(next('NAR size'), 'NAR size');
    const deriverLine = next('deriver');
    const deriver = deriverLine === '' ? null : storePath(deriverLine, 'deriver');
    const n = count(next('reference count'), 'reference count');
    const references: string[] = [];
    for (let k = 0; k < n; k++) references.push(storePath(next('reference'), 'reference'));
    out.push({ path, narHash: Hash.fromBytes('sha256', Buffer.from(hex, 'hex')), narSize, deriver, references });
  }
  return out;
}
