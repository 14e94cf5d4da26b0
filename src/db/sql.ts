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
