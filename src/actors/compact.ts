import type { JobsetRecord } from './model.ts';

/**
 * Memory helpers for the step graph. V8 grows an array's backing store by
 * at least 16 slots on a push, so the typical one- or two-element lists of
 * 300k steps would waste ~130 bytes each; small arrays are therefore
 * replaced by exact-size copies, large ones grow as usual.
 */
const EXACT_UP_TO = 8;

export function append<T>(arr: T[], x: T): T[] {
  if (arr.length >= EXACT_UP_TO) {
    arr.push(x);
    return arr;
  }
  const next = new Array<T>(arr.length + 1);
  for (let i = 0; i < arr.length; i++) next[i] = arr[i]!;
  next[arr.length] = x;
  return next;
}

/** Removes the element at `i` by moving the last one there (order is not kept). */
export function swapRemove<T>(a: T[], i: number): void {
  if (i < 0) return;
  a[i] = a[a.length - 1]!;
  a.pop();
}

/** One shared frozen array per distinct set of jobsets: most steps belong to one or two. */
export class JobsetSets {
  private readonly sets = new Map<string, readonly JobsetRecord[]>();

  with(current: readonly JobsetRecord[], add: JobsetRecord): readonly JobsetRecord[] {
    if (current.includes(add)) return current;
    const list = [...current, add].sort((a, b) => a.id - b.id);
    const key = list.map((j) => j.id).join(',');
    let set = this.sets.get(key);
    if (!set) this.sets.set(key, (set = Object.freeze(list)));
    return set;
  }
}

export const NO_JOBSETS: readonly JobsetRecord[] = Object.freeze([]);
