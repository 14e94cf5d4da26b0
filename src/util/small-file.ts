import { closeSync, fstatSync, openSync, readFile, readFileSync } from 'node:fs';

/**
 * Files up to this size are read and written with synchronous calls on the
 * main thread: each is one system call of a few microseconds on a local
 * disk, where fs.promises costs a promise, a thread-pool hand-off and a
 * wake-up per call (an open-read-close of a .drv is five of them). Larger
 * files, and anything waiting for the disk (fdatasync), stay on the pool.
 */
export const SMALL_FILE = 64 * 1024;

/**
 * The rest of the open file `fd`, whose size is `size`: read synchronously
 * when small, else on the thread pool. The caller closes `fd`.
 */
export function readOpenFile(fd: number, size: number): Promise<Buffer> {
  if (size <= SMALL_FILE) {
    try {
      return Promise.resolve(readFileSync(fd));
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
