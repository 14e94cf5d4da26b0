import { NixFormatError } from '../errors/index.ts';
import type { BinaryCache, PathUpload } from './binary-cache.ts';
import { type LocalPathInfo, queryPathInfos } from './local-path-info.ts';
import { mapLimit } from '../util/map-limit.ts';

export interface UploadClosureOptions {
  /** Paths uploaded at once (default 4). Compression itself is bounded by the worker pool. */
  concurrency?: number;
}

export interface ClosureUpload {
  /** Paths this call published, in the order their narinfos appeared (references first). */
  uploaded: PathUpload[];
  /**
   * Paths found in the cache already (or published by another upload
   * meanwhile). A path the cache has brings its closure (narinfos are
   * written references first), which is not walked.
   */
  skipped: string[];
}

/** stat()s in flight while checking which paths the cache has. */
const PROBE_CONCURRENCY = 32;


/**
 * Publishes the closure of `paths` (output paths in the local store): what
 * the cache already has is skipped (with its closure), the rest is uploaded references first,
 * so that no narinfo ever names a path the cache lacks. On a failure no new
 * upload starts, those running finish, and the first error is thrown (paths
 * depending on the failed one are never published).
 */
export async function uploadClosure(cache: BinaryCache, paths: readonly string[], options: UploadClosureOptions = {}): Promise<ClosureUpload> {
  const concurrency = options.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
  if (paths.length === 0) return { uploaded: [], skipped: [] };

  // Walk the closure only through paths the cache lacks, a level at a time.
  const todo = new Map<string, LocalPathInfo>();
  const skipped: string[] = [];
  const seen = new Set<string>(paths);
  let frontier = [...seen];
  while (frontier.length > 0) {
    const present = await mapLimit(frontier, PROBE_CONCURRENCY, (p) => cache.has(p));
    skipped.push(...frontier.filter((_, i) => present[i]));
    const next: string[] = [];
    for (const info of await queryPathInfos(frontier.filter((_, i) => !present[i]))) {
      todo.set(info.path, info);
      for (const r of info.references) {
        if (seen.has(r)) continue;
        seen.add(r);
        next.push(r);
      }
    }
    frontier = next;
  }

  // The dependency graph among the paths to upload (references the cache has are already satisfied).
  const waitingOn = new Map<string, number>();
  const dependents = new Map<string, string[]>();
  for (const info of todo.values()) {
    let n = 0;
    for (const ref of info.references) {
      if (ref === info.path || !todo.has(ref)) continue;
      n++;
      const list = dependents.get(ref);
      if (list) list.push(info.path);
      else dependents.set(ref, [info.path]);
    }
    waitingOn.set(info.path, n);
  }
  const ready = [...todo.keys()].filter((p) => waitingOn.get(p) === 0);

  const uploaded: PathUpload[] = [];
  let failure: { error: unknown } | null = null;
  let running = 0;
  let done = 0;

  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (!failure && running < concurrency && ready.length > 0) {
        const path = ready.shift()!;
        running++;
        cache.publish(todo.get(path)!, { probed: true }).then(
          (r) => {
            running--;
            done++;
            if (r.uploaded) uploaded.push(r);
            else skipped.push(path);
            for (const d of dependents.get(path) ?? []) {
              const left = waitingOn.get(d)! - 1;
              waitingOn.set(d, left);
              if (left === 0) ready.push(d);
            }
            pump();
          },
          (error: unknown) => {
            running--;
            failure ??= { error };
            pump();
          },
        );
      }
      if (running > 0) return;
      if (!failure && done < todo.size) {
        // Nothing runs, nothing is ready, paths remain: the references form a cycle (a corrupt store).
        const stuck = [...todo.keys()].filter((p) => waitingOn.get(p)! > 0);
        failure = { error: new NixFormatError('path-info', `reference cycle among ${stuck.slice(0, 5).join(', ')}`) };
      }
      resolve();
    };
    pump();
  });
  if (failure) throw (failure as { error: unknown }).error;
  return { uploaded, skipped };
}
