import { HttpError } from '../errors/index.ts';

export interface Page {
  readonly offset: number;
  readonly limit: number;
}

/** Lists are bounded: `?offset=&limit=` with limit at most `max`, so no response grows with the queue. */
export function pageOf(url: URL, def = 100, max = 1000): Page {
  const num = (name: string, d: number): number => {
    const v = url.searchParams.get(name);
    if (v === null) return d;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new HttpError(400, `${name} must be a non-negative integer`);
    return n;
  };
  return { offset: num('offset', 0), limit: Math.min(num('limit', def), max) };
}

/** Takes one page from an iterable without materialising what lies beyond it; counts the total. */
export function takePage<T, R>(items: Iterable<T>, page: Page, map: (x: T) => R): { items: R[]; total: number } {
  const out: R[] = [];
  let total = 0;
  for (const x of items) {
    if (total >= page.offset && out.length < page.limit) out.push(map(x));
    total++;
  }
  return { items: out, total };
}
