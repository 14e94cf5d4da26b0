import { readFileSync } from 'node:fs';

const cache = new Map<string, string>();

/**
 * Loads a statement from src/db/sql/<name>.sql. SQL lives in its own files,
 * one statement or concern each, so it can be read and reviewed as SQL.
 */
export function sql(name: string): string {
  let text = cache.get(name);
  if (text === undefined) {
    text = readFileSync(new URL(`./sql/${name}.sql`, import.meta.url), 'utf8');
    cache.set(name, text);
  }
  return text;
}

/** A statement PostgreSQL prepares under its own name. */
export interface PreparedStatement {
  readonly name: string;
  readonly text: string;
}

const preparedCache = new Map<string, PreparedStatement>();

/**
 * sql(name) as a named statement: each connection parses it once, and after
 * a few runs plans it once, instead of on every call. For the single,
 * parameterised statements run per step (a multi-statement file cannot be
 * prepared).
 */
export function prepared(name: string): PreparedStatement {
  let s = preparedCache.get(name);
  if (s === undefined) {
    s = Object.freeze({ name: `hydrant/${name}`, text: sql(name) });
    preparedCache.set(name, s);
  }
  return s;
}
