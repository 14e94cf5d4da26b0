import { mkdir, open, symlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { parseNar } from './nar-reader.ts';
import type { ByteSource, NarByteReader, NarParseOptions } from './nar-reader.ts';

const SLASH = Buffer.from('/');

/**
 * Restores a NAR stream to `dest`, which must not exist yet (like Nix's
 * restorePath): the root becomes `dest` itself, whether file, symlink or
 * directory. Files are created with mode 0666 and directories 0777, both
 * less the umask; executables get all execute bits added. Entry names were
 * validated by the parser, so nothing is written outside `dest`, and files
 * are opened with O_EXCL so nothing existing is followed or overwritten.
 * On failure the partial tree is left for the caller to remove.
 */
export async function restoreNar(source: ByteSource | NarByteReader, dest: string, options: NarParseOptions = {}): Promise<void> {
  const root = Buffer.from(dest);
  const dirs: Buffer[] = [];
  const fsPath = (path: readonly Buffer[]): Buffer => {
    if (path.length === 0) return root;
    const parent = dirs[path.length - 1];
    if (parent === undefined) throw new Error('restoreNar: entry outside a directory');
    return Buffer.concat([parent, SLASH, path[path.length - 1]!]);
  };
  let file: FileHandle | null = null;
  try {
    for await (const ev of parseNar(source, options)) {
      switch (ev.type) {
        case 'directory': {
          const p = fsPath(ev.path);
          await mkdir(p, { mode: 0o777 });
          dirs[ev.path.length] = p;
          break;
        }
        case 'directory-end':
          dirs.length = ev.path.length;
          break;
        case 'regular':
          file = await open(fsPath(ev.path), 'wx', 0o666);
          if (ev.executable) await file.chmod(((await file.stat()).mode & 0o7777) | 0o111);
          break;
        case 'contents': {
          let done = 0;
          while (done < ev.chunk.length) {
            const { bytesWritten } = await file!.write(ev.chunk, done, ev.chunk.length - done);
            done += bytesWritten;
          }
          break;
        }
        case 'regular-end': {
          const f = file!;
          file = null;
          await f.close();
          break;
        }
        case 'symlink':
          await symlink(ev.target, fsPath(ev.path));
          break;
      }
    }
  } finally {
    if (file !== null) await file.close().catch(() => {});
  }
}
