import { runDemo } from '../../demo/run.ts';
import { ConfigError } from '../../errors/index.ts';
import type { CommandArgs } from '../command.ts';

export async function run({ values }: CommandArgs): Promise<number> {
  const port = httpPort(values['http-listen'] as string | undefined, values['http-port'] as string | undefined);
  // main.ts checked --log-format and handed it on in the environment.
  const format = process.env.HYDRANT_LOG_FORMAT === 'pretty' ? 'pretty' : 'json';
  return runDemo({
    stateDir: (values['state-dir'] as string | undefined) ?? 'state',
    exitWhenDone: values['exit-when-done'] === true,
    httpPort: port,
    logFormat: format,
    verbose: values.verbose === true,
    provision: values.provision === true,
  });
}

function httpPort(listen: string | undefined, port: string | undefined): number | undefined {
  if (listen !== undefined && port !== undefined) throw new ConfigError('--http-listen and --http-port are the same setting: pass one of them');
  if (listen === undefined && port === undefined) return undefined;
  const flag = listen !== undefined ? '--http-listen' : '--http-port';
  const m = listen !== undefined ? /^(?:127\.0\.0\.1|localhost):(\d+)$/.exec(listen) : /^(\d+)$/.exec(port!);
  const n = m ? Number(m[1]) : NaN;
  if (!(n >= 1 && n <= 65535)) {
    throw new ConfigError(`${flag}: '${listen ?? port}' is not ${listen !== undefined ? '127.0.0.1:PORT (the demo listens on loopback only)' : 'a port number (1-65535)'}`);
  }
  return n;
}
