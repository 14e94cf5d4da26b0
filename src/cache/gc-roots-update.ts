import { mkdir, open, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { keptBuilds, rootsOfBuild } from '../db/gc-roots.ts';
import type { Pool } from '../db/pool.ts';
import { asDiskWriteError } from '../errors/index.ts';
import { isRootName, readRootsDir } from './gc-roots-dir.ts';

/**
 * `hydrant gc-roots`: keeps the GC roots directory as Hydra's
 * hydra-update-gc-roots does. The roots are the outputs (status 0 or 6) and,
 * for unfinished and failed builds, the derivations of the builds
 * sql/gc-roots/kept-builds.sql selects; missing root files are made, and
 * entries no longer wanted are removed once their file is older than a day
 * (a root a runner or evaluator has just made may not be in the database
 * yet). Unlike Hydra, roots are made whether or not the local store holds
 * the path: the same directory decides what `hydrant cache gc` keeps in a
 * binary cache, and Nix's collector ignores a root naming no valid path.
 * The directory is read before the database, so a root made during the run
 * is seen as new next time, not removed now. Running it again changes
 * nothing; it is safe to run from a timer.
 */

/** Hydra's grace period for roots no build keeps. */
export const STALE_ROOT_AGE_MS = 24 * 3600 * 1000;

export interface GcRootsReport {
  /** Builds whose paths are kept. */
  builds: number;
  /** Roots wanted now. */
  wanted: number;
  /** Root files made by this run. */
  created: string[];
  /** Unwanted roots removed (older than a day). */
  removed: string[];
  /** Unwanted roots left because they are younger than a day. */
  recent: string[];
  /** Directory entries that name no store path: reported, left alone. */
  junk: string[];
  /** Paths in the database that are not store paths (never made into roots). */
  invalid: string[];
}

export interface UpdateGcRootsOptions {
  pool: Pool;
  rootsDir: string;
  now?: Date;
  /** Lists what would change without changing it. */
  dryRun?: boolean;
}

export async function updateGcRoots(o: UpdateGcRootsOptions): Promise<GcRootsReport> {
  const now = o.now ?? new Date();
  await mkdir(o.rootsDir, { recursive: true }).catch((e: unknown) => {
    throw asDiskWriteError(e, 'the GC roots directory', o.rootsDir);
  });
  const listing = await readRootsDir(o.rootsDir);
  const builds = await keptBuilds(o.pool, now);
  const wanted = new Set<string>();
  const invalid: string[] = [];
  for (const b of builds) {
    for (const p of rootsOfBuild(b)) {
      const name = basename(p);
      if (p.startsWith('/') && isRootName(name)) wanted.add(name);
      else invalid.push(p);
    }
  }
  const present = new Set(listing.roots.map((r) => r.name));
  const report: GcRootsReport = { builds: builds.length, wanted: wanted.size, created: [], removed: [], recent: [], junk: listing.junk, invalid };
  for (const name of [...wanted].sort()) {
    if (present.has(name)) continue;
    report.created.push(name);
    if (o.dryRun) continue;
    const file = join(o.rootsDir, name);
    // 'a' never truncates an existing root, nor fails when a runner made it meanwhile.
    try {
      await (await open(file, 'a')).close();
    } catch (e) {
      throw asDiskWriteError(e, 'a GC root', file);
    }
  }
  const staleBefore = now.getTime() - STALE_ROOT_AGE_MS;
  for (const r of listing.roots) {
    if (wanted.has(r.name)) continue;
    if (r.changed.getTime() >= staleBefore) {
      report.recent.push(r.name);
      continue;
    }
    report.removed.push(r.name);
    if (o.dryRun) continue;
    await unlink(join(o.rootsDir, r.name)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw asDiskWriteError(e, 'a GC root', join(o.rootsDir, r.name));
    });
  }
  return report;
}
