import { spawnSync } from 'node:child_process';

let setprivOk: boolean | undefined;

/**
 * `cmd args` wrapped so that the child gets `signal` when this process dies,
 * even by SIGKILL: util-linux's setpriv sets the parent-death signal and
 * execs the command (same pid). Unchanged where setpriv is missing.
 */
export function dieWithParent(signal: 'INT' | 'TERM', cmd: string, args: readonly string[]): [string, string[]] {
  setprivOk ??= spawnSync('setpriv', ['--version'], { stdio: 'ignore' }).status === 0;
  return setprivOk ? ['setpriv', ['--pdeathsig', signal, '--', cmd, ...args]] : [cmd, [...args]];
}
