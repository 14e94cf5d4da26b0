import { execFileSync, spawnSync } from 'node:child_process';

/** The account the server runs as: `postgres` when Hydrant is root (PostgreSQL refuses root), else this process's own. */
export interface ServerUser {
  uid: number;
  gid: number;
}

/** undefined when not root: the server runs as this process's user. */
export function serverUser(): ServerUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const lookup = (): ServerUser => ({
    uid: Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  });
  try {
    return lookup();
  } catch {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', 'postgres']);
    return lookup();
  }
}

/**
 * Whether `user` can traverse to `dir`, asked of the kernel itself (access(2)
 * as that user), so ACLs, groups and every ancestor count.
 */
export function canReach(user: ServerUser, dir: string): boolean {
  return spawnSync('test', ['-x', dir], { uid: user.uid, gid: user.gid, stdio: 'ignore' }).status === 0;
}
