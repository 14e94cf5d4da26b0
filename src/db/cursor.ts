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
  let failed = false;
  // The connection may also die while the consumer holds a batch.
  const dead = () => (failed = true);
  client.on('error', dead);
  client.on('end', dead);
  try {
    for (;;) {
      const rows = await cursor.read(batchSize);
      if (rows.length === 0) return;
      yield rows;
    }
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    // After a failed read (e.g. the server went away) close() would wait
    // forever for a reply: the client is discarded instead.
    if (!failed) await cursor.close().catch(() => {});
    client.off('error', dead);
    client.off('end', dead);
    client.release(failed);
  }
}
