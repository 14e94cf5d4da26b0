import { readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DatabaseUnavailableError, EmbeddedConflictError } from '../../errors/index.ts';
import { privateDir } from './credentials.ts';

/**
 * Hydrant's mark on the server it started: pid, the kernel's start time of
 * that pid (so a reused pid never matches), binary and data directory. Kept
 * in the private `embedded-db/` of the state directory.
 */
interface ServerMark {
  pid: number;
  startTime: string;
  binary: string;
  dataDir: string;
  /** The Hydrant process that started it, and that process's start time. */
  owner: number;
  ownerStartTime: string;
}

const markFile = (stateDir: string): string => join(privateDir(stateDir), 'server.json');

/** Field 22 of /proc/<pid>/stat (clock ticks since boot); null when the process is gone. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/** Running (a zombie, exited but not yet reaped, is not). */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export function writeMark(stateDir: string, pid: number, binary: string, dataDir: string): void {
  const mark: ServerMark = { pid, startTime: startTime(pid) ?? '', binary, dataDir, owner: process.pid, ownerStartTime: startTime(process.pid) ?? '' };
  writeFileSync(markFile(stateDir), `${JSON.stringify(mark)}\n`, { mode: 0o600 });
}

export function clearMark(stateDir: string): void {
  rmSync(markFile(stateDir), { force: true });
}

function readMark(stateDir: string): ServerMark | null {
  try {
    return JSON.parse(readFileSync(markFile(stateDir), 'utf8')) as ServerMark;
  } catch {
    return null;
  }
}

/** Whether `pid` is the server Hydrant started on `dataDir`: mark, start time, binary and -D all agree. */
function isOurs(mark: ServerMark, pid: number, dataDir: string): boolean {
  if (mark.pid !== pid || mark.dataDir !== dataDir || mark.startTime === '' || startTime(pid) !== mark.startTime) return false;
  const argv = cmdline(pid);
  const d = argv.indexOf('-D');
  try {
    return realpathSync(argv[0] ?? '') === realpathSync(mark.binary) && d >= 0 && argv[d + 1] === dataDir;
  } catch {
    return false; // a binary that is gone is not ours to judge
  }
}

/**
 * Before a start: a server left running on `dataDir` by a Hydrant that was
 * killed (SIGKILL, the OOM killer) is stopped — fast shutdown, immediate
 * after 20 s — so this start can take the directory. A live process that is
 * not provably that server is never signalled, nor is the server of a
 * Hydrant still running on the same state directory: the start is refused. A
 * postmaster.pid naming a dead process is left for PostgreSQL, which
 * recognises it as stale itself.
 */
export async function stopOrphan(stateDir: string, dataDir: string, onLog?: (line: string) => void): Promise<boolean> {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return false;
  const mark = readMark(stateDir);
  if (!mark || !isOurs(mark, pid, dataDir)) {
    throw new EmbeddedConflictError(
      `process ${pid}, which Hydrant did not start, holds ${dataDir} (its postmaster.pid); stop that server, or remove the postmaster.pid if no PostgreSQL runs there`,
    );
  }
  // Not an orphan while the Hydrant that started it runs: a second Hydrant on the same state directory.
  if (mark.owner !== process.pid && alive(mark.owner) && startTime(mark.owner) === mark.ownerStartTime) {
    throw new EmbeddedConflictError(`the embedded database in ${dataDir} is in use by Hydrant process ${mark.owner}; stop it first, or use another state directory`);
  }
  onLog?.(`stopping PostgreSQL (pid ${pid}) left running on ${dataDir} by an earlier Hydrant`);
  process.kill(pid, 'SIGINT');
  for (let waited = 0; alive(pid); waited += 100) {
    if (waited === 20_000) process.kill(pid, 'SIGQUIT');
    if (waited >= 40_000) throw new DatabaseUnavailableError(`PostgreSQL (pid ${pid}) left running on ${dataDir} does not stop`);
    await sleep(100);
  }
  return true;
}
