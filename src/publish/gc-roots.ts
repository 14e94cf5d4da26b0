import { basename } from 'node:path';
import { userInfo } from 'node:os';
import { addRootFileSync } from '../nix/root-file.ts';

/** Hydra's default: a per-user directory inside Nix's GC roots. */
export function defaultRootsDir(): string {
  return `/nix/var/nix/gcroots/per-user/${userInfo().username}/hydra-roots`;
}

/**
 * Registers store paths as GC roots the way Hydra does: an empty file named
 * after the path's basename in `rootsDir`. Nix's collector treats a regular
 * file in its roots tree whose name is a valid store path as a root, so the
 * files cost no symlink target and survive the path being replaced.
 */
export async function addGcRoots(rootsDir: string, paths: readonly string[]): Promise<void> {
  for (const p of paths) addRootFileSync(rootsDir, basename(p));
}
