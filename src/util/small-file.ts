import { closeSync, fstatSync, openSync, readFile, readSync } from 'node:fs';

/**
 * Files up to this size are read and written with synchronous calls on the
 * main thread: each is one system call of a few microseconds on a local
 * disk, where fs.promises costs a promise, a thread-pool hand-off and a
 * wake-up per call (an open-read-close of a .drv is five of them). Larger
 * files, and anything waiting for the disk (fdatasync), stay on the pool.
 */
export const SMALL_FILE = 64 * 1024;

/**
 * The file `fd` just opened, whose fstat gave `size`: read synchronously when
 * small (the `size` bytes, as readFileSync reads a regular file, without its
 * second fstat; not for files whose size fstat does not tell, such as
 * /proc's), else on the thread pool. The caller closes `fd`.
 */
export function readOpenFile(fd: number, size: number): Promise<Buffer> {
  if (size <= SMALL_FILE) {
    try {
      const buf = Buffer.allocUnsafe(size);
      let off = 0;
      while (off < size) {
        const n = readSync(fd, buf, off, size - off, null);
        if (n === 0) break;
        off += n;
      }
      return Promise.resolve(off === size ? buf : buf.subarray(0, off));
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }
  return new Promise((resolve, reject) => readFile(fd, (e, b) => (e ? reject(e) : resolve(b))));
}

/** A whole file (readFile), with synchronous calls when it is small. */
export async function readWholeFile(path: string): Promise<Buffer> {
  const fd = openSync(path, 'r');
  try {
    return await readOpenFile(fd, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}
