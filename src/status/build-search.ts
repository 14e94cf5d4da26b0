import { HttpError } from '../errors/index.ts';

/** Longest search text accepted: longer than any store path (Nix caps a name at 211 characters), bounded so a query's cost is. */
export const SEARCH_MAX_LENGTH = 400;

/**
 * What an operator typed in the history's search box, as the database is
 * asked it. Exactly one kind is set (the others null), so the statement
 * takes the indexed path for ids and store paths and walks the builds only
 * for free text.
 */
export interface BuildSearch {
  /** `123`, `#123`, or a Hydra build URL (`…/build/123`, `…/build/123/nixlog/1`). */
  readonly id: number | null;
  /** A whole store path (derivation or output); a file under a store path is cut to the store path. */
  readonly path: string | null;
  /** A store path's hash part (32 base-32 characters), or its base name (`<hash>-<name>`), without the store directory. */
  readonly part: string | null;
  /** Anything else: part of `project:jobset:job`, of the Nix name, of the derivation path or of a machine's name (case-insensitive). */
  readonly text: string | null;
}

// Nix's base 32 omits e, o, u and t.
const HASH = '[0-9a-df-np-sv-z]{32}';
const STORE_PATH_PREFIX = new RegExp(`^(/(?:[^/]+/)*${HASH}-[^/]+)`);
const BASE_NAME = new RegExp(`^(${HASH}(?:-[^/]+)?)(?:/|$)`);
const BUILD_URL = /\/build\/(\d{1,10})(?:[/?#]|$)/;
const INT_MAX = 2 ** 31 - 1; // Builds.id is a Postgres integer
// C0 and C1 controls, NUL included (Postgres text cannot hold NUL).
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

const idOf = (digits: string): number | null => {
  const n = Number(digits);
  return n >= 1 && n <= INT_MAX ? n : null;
};

/** Classifies `q`; null for an empty search. Throws a 400 for text too long or holding control characters. */
export function parseBuildSearch(raw: string): BuildSearch | null {
  const q = raw.trim();
  if (q === '') return null;
  if (q.length > SEARCH_MAX_LENGTH) throw new HttpError(400, `q is at most ${SEARCH_MAX_LENGTH} characters`);
  if (CONTROL.test(q)) throw new HttpError(400, 'q must not contain control characters');
  const none = { id: null, path: null, part: null, text: null };
  const digits = /^#?(\d{1,10})$/.exec(q);
  if (digits) {
    const id = idOf(digits[1]!);
    // A number no build can have finds nothing, as a search for it should.
    return { ...none, id: id ?? 0 };
  }
  const url = BUILD_URL.exec(q);
  if (url && /^https?:\/\//.test(q)) return { ...none, id: idOf(url[1]!) ?? 0 };
  if (q.startsWith('/')) return { ...none, path: STORE_PATH_PREFIX.exec(q)?.[1] ?? q };
  const base = BASE_NAME.exec(q);
  if (base) return { ...none, part: base[1]! };
  return { ...none, text: q };
}
