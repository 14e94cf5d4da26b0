import pino from 'pino';

export type Logger = pino.Logger;

export interface LoggerOptions {
  level?: string;
  /** 'json' (default) for machines, 'pretty' for terminals; default from HYDRANT_LOG_FORMAT. */
  format?: 'json' | 'pretty';
  destination?: NodeJS.WritableStream;
}

/**
 * Structured JSON logs. Known secret-bearing fields are redacted wherever
 * they appear, so a config or URL object logged by mistake leaks nothing.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const base: pino.LoggerOptions = {
    level: options.level ?? (process.env.HYDRANT_LOG_LEVEL || 'info'),
    base: { app: 'hydrant' },
    redact: {
      paths: ['password', 'token', 'secretKey', 'dbUrl', '*.password', '*.token', '*.secretKey', '*.dbUrl', 'headers.authorization'],
      censor: '[redacted]',
    },
  };
  const format = options.format ?? (process.env.HYDRANT_LOG_FORMAT === 'pretty' ? 'pretty' : 'json');
  if (format === 'pretty') {
    return pino(base, prettyStream(options.destination ?? process.stderr));
  }
  return pino(base, (options.destination as pino.DestinationStream | undefined) ?? pino.destination(2));
}

/** A dependency-free one-line-per-record renderer for terminals. */
function prettyStream(out: NodeJS.WritableStream): pino.DestinationStream {
  const names: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
  return {
    write(line: string) {
      const rec = JSON.parse(line) as Record<string, unknown>;
      const { level, time, msg, app: _app, pid: _pid, hostname: _h, ...rest } = rec;
      const t = new Date(Number(time)).toISOString().slice(11, 23);
      const extra = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
      out.write(`${t} ${(names[Number(level)] ?? level)!.toString().padEnd(5)} ${msg ?? ''}${extra ? ' ' + extra : ''}\n`);
    },
  };
}
