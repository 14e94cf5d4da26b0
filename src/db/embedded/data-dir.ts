import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readlinkSync, realpathSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EmbeddedPlacementError } from '../../errors/index.ts';
import { assertRootOnly } from './binaries.ts';
import { canReach, type ServerUser } from './server-user.ts';

/**
 * The data directory for `<stateDir>/postgres`, made if missing; returns its
 * real path. As root the server runs as `postgres`, which must reach it: in
 * the state directory when it can (the state directory is made traversable,
 * never listable by others), otherwise (a checkout in a mode-700 home) in
 * `<runtimeDir>/postgres-data/<random>`, linked from `<stateDir>/postgres`,
 * with `<random>.state` naming the state directory it belongs to.
 */
export function placeDataDir(stateDir: string, user: ServerUser | undefined, runtimeDir: string): string {
  const link = join(stateDir, 'postgres');
  if (existsSync(link) || isDanglingLink(link)) {
    if (!existsSync(link)) throw new EmbeddedPlacementError(`${link} links to ${readlinkSync(link)}, which is gone; remove the link to start a new database`);
    const real = realpathSync(link);
    if (user && !canReach(user, real)) {
      throw new EmbeddedPlacementError(`the postgres user cannot reach the database in ${real}; make its parent directories traversable (chmod o+x) or move the state directory`);
    }
    return real;
  }
  if (!user) {
    mkdirSync(link, { mode: 0o700 });
    return realpathSync(link);
  }
  const st = statSync(stateDir);
  if ((st.mode & 0o001) === 0) chmodSync(stateDir, (st.mode & 0o7777) | 0o001);
  if (canReach(user, stateDir)) {
    mkdirSync(link, { mode: 0o700 });
    chownSync(link, user.uid, user.gid);
    return realpathSync(link);
  }
  const base = join(runtimeDir, 'postgres-data');
  mkdirSync(base, { recursive: true, mode: 0o755 });
  assertRootOnly(runtimeDir);
  assertRootOnly(base);
  const id = randomBytes(8).toString('hex');
  const dir = join(base, id);
  mkdirSync(dir, { mode: 0o700 });
  chownSync(dir, user.uid, user.gid);
  writeFileSync(`${dir}.state`, `${realpathSync(stateDir)}\n`, { mode: 0o644 });
  symlinkSync(dir, link);
  return dir;
}

function isDanglingLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

