import { runDemo } from '../../demo/run.ts';
import { ConfigError } from '../../errors/index.ts';
import type { Command } from '../command.ts';

export const demo: Command = {
  name: 'demo',
  summary: 'run a runner, two builders and a bundled jobset, and show how it goes',
  usage: 'hydrant demo [--state-dir DIR] [--exit-when-done] [--http-port N] [--verbose] [--log-format json|pretty]',
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
      --http-port N       serve the visualizer (http://127.0.0.1:N/) and the
                          status API (/status) on 127.0.0.1:N
      --verbose           runner and builder logs on stderr instead of files
      --log-format F      json (default) or pretty`,
  options: {
    'state-dir': { type: 'string' },
    'exit-when-done': { type: 'boolean' },
    'http-port': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    'log-format': { type: 'string' },
  },
  async run({ values }) {
    const port = values['http-port'] as string | undefined;
    if (port !== undefined && !(/^\d+$/.test(port) && Number(port) >= 1 && Number(port) <= 65535)) {
      throw new ConfigError(`--http-port: '${port}' is not a port number (1-65535)`);
    }
    const format = (values['log-format'] as string | undefined) ?? 'json';
    if (format !== 'json' && format !== 'pretty') throw new ConfigError(`--log-format: '${format}' is not json or pretty`);
    return runDemo({
      stateDir: (values['state-dir'] as string | undefined) ?? 'state',
      exitWhenDone: values['exit-when-done'] === true,
      httpPort: port === undefined ? undefined : Number(port),
      logFormat: format,
      verbose: values.verbose === true,
    });
  },
};
