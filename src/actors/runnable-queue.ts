import type { StepSortFn } from '../config/scheduling-fns.ts';
import { Heap } from '../util/heap.ts';
import type { MachineRecord } from './machine-record.ts';
import type { JobsetRecord, PlatformRecord, StepRecord } from './model.ts';

export type { StepSortFn } from '../config/scheduling-fns.ts';

/** A queue entry: the step with the key it was queued under (entries go stale when the step moves). */
export interface Entry {
  readonly step: StepRecord;
  readonly gen: number;
  readonly global: number;
  readonly extra: number;
  readonly local: number;
  readonly buildId: number;
}

export function shareUsed(j: JobsetRecord): number {
  return j.seconds / Math.max(j.shares, 1);
}

function extraKey(step: StepRecord, fn: StepSortFn): number {
  // Direct reverse dependencies only, as the Rust runner's `rdeps_len` (state/step.rs make_rdep).
  if (fn === 'WithRdeps') return step.rdeps.length;
  if (fn === 'WithCriticalPath') return step.criticalPath;
  return 0;
}

/** Within one jobset the share is the same for all, so entries order by the rest of Hydra's key. */
function entryLess(a: Entry, b: Entry): boolean {
  if (a.global !== b.global) return a.global > b.global;
  if (a.extra !== b.extra) return a.extra > b.extra;
  if (a.local !== b.local) return a.local > b.local;
  return a.buildId < b.buildId;
}

/**
 * The runnable steps of one platform (system + features), ordered as Hydra
 * orders them: highest global priority, then lowest fair-share use among the
 * step's jobsets, then (WithRdeps / WithCriticalPath) most dependents or
 * longest chain above, then highest local priority, then lowest build id.
 *
 * One heap per jobset keeps fair share cheap: a jobset's share changes as its
 * steps finish, which re-orders whole jobsets, never individual steps. A step
 * of several jobsets sits in each of their heaps; the first pop wins and the
 * other entries go stale (checked against `queueGen`). The free machines able
 * to run this platform sit in a heap by score.
 */
export class RunnableQueue {
  private readonly byJobset = new Map<JobsetRecord, Heap<Entry>>();
  /**
   * The same heaps as an array (jobsets[i] owns heaps[i]), walked on every
   * assignment: indexing allocates nothing, where a Map's iterator allocates
   * an entry per step until the JIT has optimised the loop.
   */
  private readonly jobsets: JobsetRecord[] = [];
  private readonly heaps: Heap<Entry>[] = [];
  /** Live (non-stale) steps queued. */
  live = 0;
  /** In the dispatcher's list of queues with steps. */
  active = false;
  /** Machines that can run this platform, connected or within their reconnect grace. */
  readonly capable = new Set<MachineRecord>();
  readonly freeMachines: Heap<MachineRecord>;
  readonly listedFree = new Set<MachineRecord>();
  /** Since when no capable machine exists while steps wait (0 = not unsupported). */
  unsupportedSince = 0;

  constructor(
    readonly platform: PlatformRecord,
    private readonly sortFn: StepSortFn,
    scoreOf: (m: MachineRecord) => number,
  ) {
    this.freeMachines = new Heap((a, b) => {
      const sa = scoreOf(a);
      const sb = scoreOf(b);
      return sa !== sb ? sa > sb : a.id < b.id;
    });
  }

  push(step: StepRecord): void {
    const gen = ++step.queueGen;
    const e: Entry = {
      step,
      gen,
      global: step.globalPriority,
      extra: extraKey(step, this.sortFn),
      local: step.localPriority,
      buildId: step.lowestBuildId,
    };
    const jobsets = step.jobsets.length > 0 ? step.jobsets : ORPHANS;
    for (let i = 0; i < jobsets.length; i++) {
      const j = jobsets[i]!;
      let h = this.byJobset.get(j);
      if (!h) {
        this.byJobset.set(j, (h = new Heap(entryLess)));
        this.jobsets.push(j);
        this.heaps.push(h);
      }
      h.push(e);
    }
    this.live++;
  }

  /** Re-queues a step whose priority changed (the old entries go stale). */
  reprioritize(step: StepRecord): void {
    this.live--;
    this.push(step);
  }

  /** Forgets a queued step (dispatched elsewhere, cancelled, failed). */
  drop(step: StepRecord): void {
    step.queueGen++;
    this.live--;
    if (this.live === 0) {
      this.byJobset.clear();
      this.jobsets.length = 0;
      this.heaps.length = 0;
    }
  }

  private static fresh(e: Entry): boolean {
    return e.gen === e.step.queueGen && e.step.state === 'runnable';
  }

  /**
   * The heap holding the best live entry as of the last `top()`, and that
   * entry's share use: kept in fields, not returned as an object, because
   * the dispatcher asks for it on every assignment.
   */
  private topHeap: Heap<Entry> | null = null;
  topShare = 0;

  /** The best live entry (null: none), discarding stale tops on the way; its share use is left in `topShare`. */
  top(): Entry | null {
    let bestHeap: Heap<Entry> | null = null;
    let best: Entry | null = null;
    let bestShare = 0;
    for (let i = 0; i < this.heaps.length; i++) {
      const heap = this.heaps[i]!;
      const jobset = this.jobsets[i]!;
      let top = heap.peek();
      while (top && !RunnableQueue.fresh(top)) {
        heap.pop();
        top = heap.peek();
      }
      if (!top) {
        this.byJobset.delete(jobset);
        this.heaps.splice(i, 1); // in order: ties between jobsets go to the first, as before
        this.jobsets.splice(i, 1);
        i--;
        continue;
      }
      const share = jobset === ORPHAN ? 0 : shareUsed(jobset);
      if (!best || globalLess(top, share, best, bestShare)) {
        bestHeap = heap;
        best = top;
        bestShare = share;
      }
    }
    this.topHeap = bestHeap;
    this.topShare = bestShare;
    return best;
  }

  /**
   * Removes and returns the step of `entry`, which the last `top()` returned
   * with nothing queued or dropped since (the dispatcher's round peeks and
   * takes in one go).
   */
  take(entry: Entry): StepRecord {
    this.topHeap!.pop();
    this.topHeap = null;
    this.drop(entry.step);
    return entry.step;
  }

  /** Removes and returns the best runnable step. */
  pop(): StepRecord | null {
    const e = this.top();
    return e ? this.take(e) : null;
  }
}

/** Steps not (yet) attributed to any jobset share one pseudo-jobset with zero share use. */
const ORPHAN: JobsetRecord = { id: 0, project: '', name: '', shares: 1, seconds: 0, charges: [] };
const ORPHANS: readonly JobsetRecord[] = [ORPHAN];

/** Hydra's full order across jobsets and platforms. */
export function globalLess(a: Entry, shareA: number, b: Entry, shareB: number): boolean {
  if (a.global !== b.global) return a.global > b.global;
  if (shareA !== shareB) return shareA < shareB;
  if (a.extra !== b.extra) return a.extra > b.extra;
  if (a.local !== b.local) return a.local > b.local;
  return a.buildId < b.buildId;
}
