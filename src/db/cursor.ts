import type pg from 'pg';
import Cursor from 'pg-cursor';

/**
 * Streams the rows of a query in batches through a server-side cursor, so
 * reading 100k+ queued builds never holds them all in memory. The client is
 * held until the generator finishes or is abandoned (return()).
 */
export async function* streamRows<R extends Record<string, unknown>>(
  pool: pg.Pool,
  text: string,
  values: unknown[] = [],
  batchSize = 1000,
): AsyncGenerator<R[], void, undefined> {
  const client = await pool.connect();
  const cursor = client.query(new Cursor<R>(text, values));
  // A read must fail, not hang, when the connection dies (the server went
  // away): the client's own events settle it whatever state the cursor is in.
  let died: Error | null = null;
  let interrupt: ((e: Error) => void) | null = null;
  const dead = (e?: Error) => {
    died ??= e ?? new Error('Connection terminated');
    interrupt?.(died);
  };
  const ended = () => dead();
  client.on('error', dead);
  client.on('end', ended);
  const read = (): Promise<R[]> =>
    died
      ? Promise.reject(died)
      : new Promise<R[]>((resolve, reject) => {
          interrupt = reject;
          cursor.read(batchSize).then(resolve, reject);
        }).finally(() => {
          interrupt = null;
        });
  let failed = false;
  try {
    for (;;) {
      const rows = await read();
      if (rows.length === 0) return;
      yield rows;
    }
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    // After a failure close() would wait forever for a reply: the client is discarded instead.
    if (!failed && !died) await cursor.close().catch(() => {});
    client.off('error', dead);
    client.off('end', ended);
    client.release(failed || died !== null);
  }
}
