import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { COMMANDS } from '../../src/cli/commands.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

/**
 * The specifiers a module imports when it is evaluated: static import and
 * export-from declarations, not `import type` (erased) and not `import()`
 * (run later, if at all).
 */
function staticImports(source: string): string[] {
  const sf = ts.createSourceFile('m.ts', source, ts.ScriptTarget.ES2022, false);
  const out: string[] = [];
  for (const s of sf.statements) {
    if (ts.isImportDeclaration(s) && !s.importClause?.isTypeOnly) out.push((s.moduleSpecifier as ts.StringLiteral).text);
    if (ts.isExportDeclaration(s) && s.moduleSpecifier && !s.isTypeOnly) out.push((s.moduleSpecifier as ts.StringLiteral).text);
  }
  return out;
}

/** Every module evaluated when `file` is imported (repository-relative), and the packages among them. */
function staticClosure(file: string): { modules: string[]; packages: string[] } {
  const modules = new Set<string>();
  const packages = new Set<string>();
  const visit = (f: string): void => {
    if (modules.has(f)) return;
    modules.add(f);
    for (const spec of staticImports(readFileSync(path.join(REPO, f), 'utf8'))) {
      if (spec.startsWith('.')) visit(path.posix.normalize(path.posix.join(path.posix.dirname(f), spec)));
      else packages.add(spec);
    }
  };
  visit(file);
  return { modules: [...modules].sort(), packages: [...packages].sort() };
}

describe("the hydrant entry imports a command's code only when that command runs", () => {
  it('finds what a module evaluates, and not what it imports lazily or for types', () => {
    expect(staticImports("import a from './a.ts';\nimport type { B } from './b.ts';\nexport * from './c.ts';\nexport type { D } from './d.ts';\nconst e = () => import('./e.ts');\n")).toEqual(['./a.ts', './c.ts']);
  });

  it('main.ts evaluates the command table, Node built-ins and the error classes, nothing of any command', () => {
    const { modules, packages } = staticClosure('src/cli/main.ts');
    const outside = modules.filter((m) => !m.startsWith('src/errors/'));
    expect(outside).toEqual(['src/cli/command.ts', 'src/cli/commands.ts', 'src/cli/main.ts', 'src/db/required-schema.ts']);
    expect(packages.filter((p) => !p.startsWith('node:'))).toEqual([]);
  });

  it('each command in the table loads its own module under src/cli/commands/', () => {
    const table = readFileSync(path.join(REPO, 'src/cli/commands.ts'), 'utf8');
    const loads = [...table.matchAll(/load: \(\) => import\('\.\/(commands\/[\w-]+\.ts)'\)/g)].map((m) => m[1]!);
    expect(loads).toHaveLength(COMMANDS.length);
    expect(new Set(loads).size).toBe(COMMANDS.length);
    for (const l of loads) expect(existsSync(path.join(REPO, 'src/cli', l)), l).toBe(true);
  });

  it("serve checks its configuration before it imports the runner's code", () => {
    // `hydrant serve` with a broken configuration reports it without loading gRPC, pg or the scheduler.
    const { packages, modules } = staticClosure('src/cli/commands/serve.ts');
    expect(packages.filter((p) => !p.startsWith('node:'))).toEqual(['smol-toml', 'zod']);
    expect(modules.some((m) => m.startsWith('src/daemon/') || m.startsWith('src/db/'))).toBe(false);
  });
});
