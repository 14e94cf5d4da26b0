import { constants } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { NarDumpError } from '../errors/index.ts';
import { NAR_MAGIC, padding } from '../nix/nar-format.ts';
import { formatNarListing, type NarListingNode, narListingJson } from '../nix/nar-listing.ts';
import { narChunks } from '../nix/nar-writer.ts';

/** Bytes a NAR string of `len` bytes takes: length word, bytes, padding (nar-format.ts). */
const strSize = (len: number) => 8 + len + padding(len);
const tok = (s: string) => strSize(Buffer.byteLength(s, 'latin1'));

/** Names and targets must survive a UTF-8 round trip for formatNarListing to reproduce them byte for byte. */
class NotUtf8 extends Error {}

function utf8(b: Buffer): string {
  const s = b.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(b)) throw new NotUtf8();
  return s;
}

/**
 * The `.ls` listing of a store path, byte-identical to Nix's, computed from
 * file metadata alone: each file's `narOffset` follows from the NAR framing
 * (nar-format.ts) and the sizes, so no file content is read. Serialising the
 * NAR again to parse it would read every byte a second time on this thread
 * (~250 ms of event-loop time per 100 MB here). Falls back to exactly that
 * for names that are not UTF-8, which the object form cannot carry.
 */
export async function listingOfPath(root: string): Promise<Buffer> {
  let offset = tok(NAR_MAGIC);
  const node = async (p: string): Promise<NarListingNode> => {
    const st = await lstat(p);
    offset += tok('(') + tok('type');
    let n: NarListingNode;
    if (st.isFile()) {
      const executable = (st.mode & constants.S_IXUSR) !== 0;
      offset += tok('regular') + (executable ? tok('executable') + tok('') : 0) + tok('contents') + 8;
      n = executable ? { type: 'regular', size: st.size, executable: true, narOffset: offset } : { type: 'regular', size: st.size, narOffset: offset };
      offset += st.size + padding(st.size);
    } else if (st.isSymbolicLink()) {
      const target = await readlink(p, { encoding: 'buffer' });
      offset += tok('symlink') + tok('target') + strSize(target.length);
      n = { type: 'symlink', target: utf8(target) };
    } else if (st.isDirectory()) {
      offset += tok('directory');
      const entries = Object.create(null) as Record<string, NarListingNode>;
      for (const name of (await readdir(p, { encoding: 'buffer' })).sort(Buffer.compare)) {
        offset += tok('entry') + tok('(') + tok('name') + strSize(name.length) + tok('node');
        entries[utf8(name)] = await node(join(p, name.toString('utf8')));
        offset += tok(')');
      }
      n = { type: 'directory', entries };
    } else {
      throw new NarDumpError(p, 'not a regular file, directory or symlink');
    }
    offset += tok(')');
    return n;
  };
  try {
    return formatNarListing({ version: 1, root: await node(root) });
  } catch (e) {
    if (!(e instanceof NotUtf8)) throw e;
    return narListingJson(narChunks(root));
  }
}
