import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors/index.ts';

/**
 * Callers, logs and tests match failures on `code`, so every error kind
 * keeps one stable code of its own, whichever module of src/errors holds it.
 */
describe('error kinds', () => {
  const dir = join(import.meta.dirname, '../../src/errors');
  const declared = new Map<string, string>(); // class → code
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.ts'))) {
    const src = readFileSync(join(dir, f), 'utf8');
    for (const m of src.matchAll(/^export class (\w+) extends (?:errorKind|subjectErrorKind)\('([^']+)'/gm)) declared.set(m[1]!, m[2]!);
  }
  const exported = Object.entries(errors)
    .filter(([name, v]) => typeof v === 'function' && (v as { prototype: unknown }).prototype instanceof errors.HydrantError && name !== 'HydrantError')
    .map(([name]) => name)
    .sort();

  it('are all exported from src/errors/index.ts, each declaring its code in its base', () => {
    expect(exported.length).toBeGreaterThan(20);
    expect([...declared.keys()].sort()).toEqual(exported);
    for (const name of exported) expect((errors as unknown as Record<string, { code: string }>)[name]!.code, name).toBe(declared.get(name));
  });

  it('each has a code of its own, in upper snake case', () => {
    const byCode = new Map<string, string>();
    for (const [name, code] of declared) {
      expect(code, name).toMatch(/^[A-Z][A-Z0-9_]*$/);
      expect(byCode.get(code), `${name} and ${byCode.get(code)} share ${code}`).toBeUndefined();
      byCode.set(code, name);
    }
  });
});
