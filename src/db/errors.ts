/**
 * Whether a database error means the connection or server went away (so the
 * same statement may succeed later), as opposed to a problem with the
 * statement itself. SQLSTATE class 08 is "connection exception"; 57P01–57P03
 * are administrator shutdown, crash shutdown and "cannot connect now".
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null;
  const code = e?.code ?? '';
  if (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03') return true;
  if (['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND'].includes(code)) return true;
  return /Connection terminated|connection error|not queryable|Client was closed/i.test(e?.message ?? '');
}
