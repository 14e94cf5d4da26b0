import { readFileSync } from 'node:fs';
import { parse as parseToml } from 'smol-toml';
import type { z } from 'zod';
import { ConfigError } from '../errors/index.ts';

/**
 * Reads an optional TOML file and merges overrides (CLI flags, defined
 * values only) over it; every failure is one ConfigError naming the file.
 */
export function readTomlWithOverrides(path: string | undefined, overrides: Record<string, unknown>): Record<string, unknown> {
  let data: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError(`${path}: cannot read: ${(err as Error).message}`, { cause: err });
    }
    try {
      data = parseToml(text) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`${path}: invalid TOML: ${(err as Error).message.split('\n')[0]}`, { cause: err });
    }
  }
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  return { ...data, ...defined };
}

/** One line per problem: `source: key.path: message`. */
export function formatIssues(err: z.ZodError, source: string): string {
  return err.issues.map((i) => `${source}: ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('; ');
}
