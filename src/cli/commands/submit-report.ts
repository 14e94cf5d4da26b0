import type { Writable } from 'node:stream';

/**
 * Writes submit's report to `out` (stdout). A reader that has gone away
 * (EPIPE, as in `hydrant submit … | head`) is not a failure: the report is
 * written only after the builds are committed, so nothing but the rest of the
 * report is lost and the command still succeeds (exit 0, nothing on stderr).
 * Resolves 'closed' then; other write errors reject.
 */
export function writeReport(out: Writable, text: string): Promise<'written' | 'closed'> {
  return new Promise((resolve, reject) => {
    const settle = (err: Error | null | undefined) => {
      if (!err) resolve('written');
      else if ((err as NodeJS.ErrnoException).code === 'EPIPE') resolve('closed');
      else reject(err);
    };
    // The failed write is reported to its callback and then again as an
    // 'error' event, which would crash the process without a listener.
    out.once('error', settle);
    out.write(text, (err) => {
      settle(err);
      if (!err) out.off('error', settle);
    });
  });
}
