/**
 * The NAR (Nix ARchive) wire format, shared by the writer and the reader.
 *
 *   nar       = str("nix-archive-1") node
 *   node      = str("(") str("type") body str(")")
 *   body      = str("regular") [str("executable") str("")] str("contents") u64(size) bytes pad
 *             | str("symlink") str("target") str(target)
 *             | str("directory") { str("entry") str("(") str("name") str(name) str("node") node str(")") }
 *   str(s)    = u64(len(s)) s pad
 *   u64       = 8 bytes little-endian; pad = zero bytes up to a multiple of 8
 *
 * Directory entries are sorted by name, bytewise (Nix keeps them in a std::map<std::string>).
 * A regular file is "executable" when its owner-execute bit (S_IXUSR) is set: that is what
 * Nix 2.8's dumpPath checks, so a file with mode 0645 is *not* executable in a NAR.
 */

export const NAR_MAGIC = 'nix-archive-1';

/** Linux NAME_MAX: no longer name can be restored, so the reader rejects it. */
export const MAX_NAME_LENGTH = 255;
/** Linux PATH_MAX (including the terminating NUL): the longest symlink target. */
export const MAX_TARGET_LENGTH = 4095;

/** Bytes of zero padding after `len` bytes of data. */
export function padding(len: number): number {
  return (8 - (len % 8)) % 8;
}

/** Why a directory entry name is invalid, or null if it is fine. */
export function invalidNameReason(name: Uint8Array): string | null {
  if (name.length === 0) return 'empty name';
  if (name.length > MAX_NAME_LENGTH) return `name longer than ${MAX_NAME_LENGTH} bytes`;
  if (name.length === 1 && name[0] === 0x2e) return "name '.'";
  if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) return "name '..'";
  if (name.includes(0x2f)) return "name contains '/'";
  if (name.includes(0)) return 'name contains a NUL byte';
  return null;
}

/** Printable form of raw bytes for error messages (JSON-quoted, lossy for non-UTF-8). */
export function showBytes(b: Uint8Array): string {
  const s = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}
