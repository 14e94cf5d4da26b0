import { loadRunnerConfig } from '../../config/runner-config.ts';
import { ConfigError } from '../../errors/index.ts';
import type { CommandArgs } from '../command.ts';

/** The URL of a runner's HTTP API from its `httpListen` (a wildcard address is reached on loopback). */
export function statusUrl(httpListen: string): string {
  const i = httpListen.lastIndexOf(':');
  let host = i > 0 ? httpListen.slice(0, i) : '127.0.0.1';
  const port = i >= 0 ? httpListen.slice(i + 1) : httpListen;
  if (host === '0.0.0.0' || host === '' || host === '*') host = '127.0.0.1';
  if (host === '::' || host === '[::]') host = '[::1]';
  return `http://${host}:${port}`;
}

export async function run({ values }: CommandArgs): Promise<number> {
  let base = values.url as string | undefined;
  if (base === undefined) base = statusUrl(loadRunnerConfig(values.config as string | undefined).httpListen);
  let url: URL;
  try {
    url = new URL('/status/provisioner', base);
  } catch {
    throw new ConfigError(`hydrant status: not a URL: ${base}`);
  }
  let doc: unknown = { status: 'down' };
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
    if (r.ok) doc = await r.json();
  } catch {
    // Not listening, or not answering: down, as Hydra reports a runner without a status row.
  }
  process.stdout.write(`${JSON.stringify(doc)}\n`);
  return 0;
}
