import { parseNar } from './nar-reader.ts';
import type { ByteSource, NarByteReader, NarParseOptions } from './nar-reader.ts';

/**
 * The file listing Nix writes next to a NAR in a binary cache (`<hash>.ls`,
 * with `write-nar-listing=true`) and prints with `nix nar ls --json -R`.
 * Key order within each object is Nix 2.8's: type, size, executable, narOffset;
 * `executable` only when true; `narOffset` is the offset of the file's
 * contents in the NAR.
 */
export type NarListingNode =
  | { type: 'regular'; size: number; executable?: true; narOffset: number }
  | { type: 'directory'; entries: Record<string, NarListingNode> }
  | { type: 'symlink'; target: string };

export interface NarListing {
  version: 1;
  root: NarListingNode;
}

/** Builds the listing of a NAR stream as objects (names decoded as UTF-8; `entries` have no prototype). */
export async function narListing(source: ByteSource | NarByteReader, options: NarParseOptions = {}): Promise<NarListing> {
  const dirs: Record<string, NarListingNode>[] = [];
  let root: NarListingNode | undefined;
  const place = (path: readonly Buffer[], node: NarListingNode): void => {
    if (path.length === 0) root = node;
    else dirs[path.length - 1]![path[path.length - 1]!.toString('utf8')] = node;
  };
  for await (const ev of parseNar(source, options)) {
    switch (ev.type) {
      case 'directory': {
        const entries = Object.create(null) as Record<string, NarListingNode>;
        place(ev.path, { type: 'directory', entries });
        dirs[ev.path.length] = entries;
        break;
      }
      case 'directory-end':
        dirs.length = ev.path.length;
        break;
      case 'regular':
        place(
          ev.path,
          ev.executable
            ? { type: 'regular', size: ev.size, executable: true, narOffset: ev.narOffset }
            : { type: 'regular', size: ev.size, narOffset: ev.narOffset },
        );
        break;
      case 'symlink':
        place(ev.path, { type: 'symlink', target: ev.target.toString('utf8') });
        break;
      default:
        break;
    }
  }
  return { version: 1, root: root! };
}

const NEEDS_ESCAPE = /[\x00-\x1f"\\]/;
const ESCAPE_ALL = /[\x00-\x1f"\\]/g;

function escapeChar(c: string): string {
  switch (c) {
    case '"':
      return '\\"';
    case '\\':
      return '\\\\';
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
    default:
      return `\\u00${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  }
}

/**
 * Writer of Nix-style compact JSON over raw bytes. Text is kept as latin1
 * strings (one char per byte) so that names which are not UTF-8 pass through
 * unchanged. Strings are escaped the way Nix 2.8's JSON writer does: `"` and
 * `\` escaped, \n \r \t by name, other bytes below 0x20 as \u00XX, every other
 * byte (non-UTF-8 ones and 0x7f included) as is.
 */
class JsonBytes {
  private parts: string[] = [];

  raw(s: string): void {
    this.parts.push(s);
  }

  str(b: Uint8Array): void {
    const l = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
    this.parts.push('"', NEEDS_ESCAPE.test(l) ? l.replace(ESCAPE_ALL, escapeChar) : l, '"');
  }

  done(): Buffer {
    return Buffer.from(this.parts.join(''), 'latin1');
  }
}

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

/**
 * The listing of a NAR stream as the exact bytes Nix writes to `<hash>.ls`
 * (`{"version":1,"root":{...}}`), names and targets copied byte for byte.
 */
export async function narListingJson(source: ByteSource | NarByteReader, options: NarParseOptions = {}): Promise<Buffer> {
  const j = new JsonBytes();
  j.raw('{"version":1,"root":');
  // Whether the directory at each depth has written an entry yet (for commas).
  const firstInDir: boolean[] = [];
  const key = (path: readonly Buffer[]): void => {
    if (path.length === 0) return;
    const d = path.length - 1;
    if (!firstInDir[d]) j.raw(',');
    firstInDir[d] = false;
    j.str(path[d]!);
    j.raw(':');
  };
  for await (const ev of parseNar(source, options)) {
    switch (ev.type) {
      case 'directory':
        key(ev.path);
        j.raw('{"type":"directory","entries":{');
        firstInDir[ev.path.length] = true;
        break;
      case 'directory-end':
        j.raw('}}');
        break;
      case 'regular':
        key(ev.path);
        j.raw(`{"type":"regular","size":${ev.size}${ev.executable ? ',"executable":true' : ''},"narOffset":${ev.narOffset}}`);
        break;
      case 'symlink':
        key(ev.path);
        j.raw('{"type":"symlink","target":');
        j.str(ev.target);
        j.raw('}');
        break;
      default:
        break;
    }
  }
  j.raw('}');
  return j.done();
}

/**
 * Serialises a listing object exactly as Nix would (entries in bytewise name
 * order, whatever the object's key order). Byte-identical to narListingJson
 * when every name and target is valid UTF-8.
 */
export function formatNarListing(listing: NarListing): Buffer {
  const j = new JsonBytes();
  const node = (n: NarListingNode): void => {
    switch (n.type) {
      case 'regular':
        j.raw(`{"type":"regular","size":${n.size}${n.executable ? ',"executable":true' : ''},"narOffset":${n.narOffset}}`);
        break;
      case 'symlink':
        j.raw('{"type":"symlink","target":');
        j.str(utf8(n.target));
        j.raw('}');
        break;
      case 'directory': {
        j.raw('{"type":"directory","entries":{');
        const names = Object.keys(n.entries).map(utf8).sort(Buffer.compare);
        names.forEach((name, i) => {
          if (i > 0) j.raw(',');
          j.str(name);
          j.raw(':');
          node(n.entries[name.toString('utf8')]!);
        });
        j.raw('}}');
        break;
      }
    }
  };
  j.raw(`{"version":${listing.version},"root":`);
  node(listing.root);
  j.raw('}');
  return j.done();
}
