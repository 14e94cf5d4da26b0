import { readFileSync } from 'node:fs';
import { parse as parseToml } from 'smol-toml';
import type { z } from 'zod';
import { ConfigError } from '../errors/index.ts';

/** Where configuration came from when no file was given: the command's flags. */
export const NO_FILE = 'options';

/**
 * Reads an optional TOML file and merges overrides (CLI flags, defined
 * values only) over it; every failure is one ConfigError naming the file
 * (and, for a TOML syntax error, its line and column).
 */
export function readTomlWithOverrides(path: string | undefined, overrides: Record<string, unknown>): Record<string, unknown> {
  let data: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
      throw new ConfigError(`${path}: cannot read the configuration file (--config): ${why}`, { cause: err });
    }
    try {
      data = parseToml(text) as Record<string, unknown>;
    } catch (err) {
      const e = err as Error & { line?: number; column?: number };
      const what = e.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      const where = e.line !== undefined ? `${path}:${e.line}:${e.column ?? 1}` : path;
      throw new ConfigError(`${where}: invalid TOML: ${what}`, { cause: err });
    }
  }
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  return { ...data, ...defined };
}

/**
 * One line per problem: `source: key (--flag): message`. A missing key says
 * so and names both places it can be set.
 */
export function formatIssues(err: z.ZodError, source: string, flags: Readonly<Record<string, string>> = {}): string {
  // Flags alone: the key and its flag say it all.
  const at = source === NO_FILE ? '' : `${source}: `;
  return err.issues
    .map((i) => {
      const key = i.path.length ? i.path.join('.') : '(top level)';
      const flag = flags[key];
      const named = flag && !i.message.includes(flag) ? `${key} (${flag})` : key;
      if (i.code === 'invalid_type' && /received undefined/.test(i.message)) {
        const file = source === NO_FILE ? 'a configuration file (--config)' : 'the file';
        return `${at}${named} is required: ${flag ? `pass ${flag}, or ` : ''}set ${key} in ${file}`;
      }
      if (i.code === 'unrecognized_keys') {
        return `${at}unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.join(', ')}${i.path.length ? ` in ${key}` : ''} (a typo? docs/OPERATIONS.md lists the keys)`;
      }
      return `${at}${named}: ${i.message}`;
    })
    .join('; ');
}

/** A PostgreSQL URL pg can use, or why not (pg would read `hydra.example` as a database on host "base"). */
export function checkDbUrl(url: string): string | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `'${url}' is not a URL`;
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') return `'${u.protocol}' is not postgres: or postgresql:`;
  if (!u.hostname && !u.searchParams.get('host')) return 'it names no host';
  return null;
}

export const DB_URL_FORM = 'postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgres:///DATABASE?host=/run/postgresql for a local socket';

/**
 * Renames alias keys (other accepted spellings) to their canonical key;
 * both spellings at once is an error naming them.
 */
export function applyAliases(input: Record<string, unknown>, aliases: Readonly<Record<string, string>>, source: string): Record<string, unknown> {
  const out = { ...input };
  for (const [alias, key] of Object.entries(aliases)) {
    if (!(alias in out)) continue;
    if (key in out) throw new ConfigError(`${source}: ${alias} and ${key} are the same setting: keep one of them`);
    out[key] = out[alias];
    delete out[alias];
  }
  return out;
}
