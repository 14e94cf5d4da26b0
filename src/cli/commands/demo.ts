import { runDemo } from '../../demo/run.ts';
import { ConfigError } from '../../errors/index.ts';
import type { Command } from '../command.ts';

export const demo: Command = {
  name: 'demo',
  summary: 'run a runner, two builders and a bundled jobset, and show how it goes',
  usage: 'hydrant demo [--state-dir DIR] [--exit-when-done] [--http-listen 127.0.0.1:N] [--provision] [--verbose]',
  help: `Starts the runner on an embedded PostgreSQL, two builder agents (each with
its own Nix store when run as root: a private /nix in a mount namespace),
queues a bundled jobset as project demo, jobset main (a dozen derivations
with shared dependencies, several outputs, one that fails, one that depends
on it, one with Hydra build products), shows progress as builds end (a
progress bar on a terminal, plain lines otherwise) and prints a summary:
builds by status, steps per machine, time, and the binary cache the runner
published the outputs to (signed with the demo's key). Then it keeps
running until SIGINT/SIGTERM, unless --exit-when-done.

      --state-dir DIR     where the demo keeps its database (postgres/), the
                          binary cache (cache/), its signing keys (keys/),
                          build logs (hydra/), the builders' stores
                          (builders/) and the runner log (demo.log);
                          default ./state. A later run with the same
                          directory finds its builds already done.
      --exit-when-done    exit once every build has ended: 0 if each ended
                          as expected, 1 otherwise (naming what differed)
      --http-listen A     serve the visualizer (http://127.0.0.1:N/) and the
                          status API (/status) on A = 127.0.0.1:N (as serve's
                          --http-listen; the demo listens on loopback only)
      --http-port N       the same as --http-listen 127.0.0.1:N
      --provision         start with no builders: hydrant provision's loop
                          (local backend) starts up to two as the jobset
                          needs them and destroys them once idle 5 s
      --verbose           runner and builder logs on stderr instead of files`,
  options: {
    'state-dir': { type: 'string' },
    'exit-when-done': { type: 'boolean' },
    'http-port': { type: 'string' },
    'http-listen': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    provision: { type: 'boolean' },
  },
  async run({ values }) {
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
  },
};

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
