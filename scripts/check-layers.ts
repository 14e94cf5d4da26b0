/**
 * The layer check (`npm run check:layers`, run by `npm test`): every import
 * under src/ must point down the layer order below (or stay inside its own
 * room), and no two modules may import each other, directly or through
 * others. docs/ARCHITECTURE.md ("Layers") documents the same order.
 *
 * Imports are read with the TypeScript compiler's pre-processor
 * (`ts.preProcessFile`): static imports, `import type`, `export … from` and
 * `import()` all count, type-only ones too (a type that has to be imported
 * upward lives in the wrong room).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * The rooms (folders directly under src/), lowest first. A module may import
 * modules of its own room and of rooms listed before it, never after.
 */
export const LAYERS: readonly string[] = Object.freeze([
  'errors', //    error classes with stable codes
  'util', //      logger, heap, batcher, directories
  'machines', //  the XState definitions (pure: only xstate; the runner lock in db runs one)
  'nix', //       Nix formats, the store, the nix tools
  'workers', //   the CPU worker pool (runs nix code: hashing, NARs, .drv parsing)
  'config', //    TOML configuration
  'eval', //      nix-eval-jobs and job defaults (used by db/submit)
  'db', //        PostgreSQL: pool, schema, queries
  'cache', //     binary caches
  'actors', //    the scheduler: step graph, dispatcher, queue monitor; its ports (builder-port.ts)
  'publish', //   publishing outputs and logs to the caches (a StepFinisher)
  'protocol', //  the gRPC protocol, runner side
  'builder', //   the builder agent, the local builder
  'status', //    status views
  'metrics', //   Prometheus metrics
  'http', //      HTTP routes and server
  'daemon', //    the runner daemon
  'provision', // hydrant provision: machines made and stopped as the queue needs them
  'demo', //      hydrant demo (its --provision runs the provisioner)
  'cli', //       the hydrant command
]);

/**
 * Known upward imports still to be moved, each `from -> to` (paths relative
 * to the repository) with the reason it stays for now. A new upward import is
 * not in this list and fails the check; an entry that no longer matches an
 * import fails too, so the list only shrinks.
 */
export const ALLOWED_UPWARD: ReadonlyMap<string, string> = new Map<string, string>([
]);

export interface Import {
  readonly from: string; // repository-relative path of the importing module
  readonly to: string; // repository-relative path of the imported module
  readonly specifier: string; // as written
  readonly line: number; // 1-based
}

export interface Violation {
  readonly kind: 'upward' | 'cycle' | 'unknown-room' | 'outside-src' | 'stale-allowance';
  readonly message: string;
}

/** A module's relative imports, resolved to repository-relative paths. */
export function importsOf(file: string, source: string, exists: (p: string) => boolean): Import[] {
  const info = ts.preProcessFile(source, true, true);
  const out: Import[] = [];
  for (const ref of info.importedFiles) {
    const spec = ref.fileName;
    if (!spec.startsWith('./') && !spec.startsWith('../')) continue;
    const to = resolve(path.posix.join(path.posix.dirname(file), spec), exists);
    const line = source.slice(0, ref.pos).split('\n').length;
    out.push({ from: file, to, specifier: spec, line });
  }
  return out;
}

function resolve(p: string, exists: (p: string) => boolean): string {
  const candidates = [p, p.replace(/\.js$/, '.ts'), p.replace(/\.mjs$/, '.mts'), `${p}.ts`, `${p}/index.ts`];
  return candidates.find(exists) ?? path.posix.normalize(p);
}

/** The room of a module under src/ (`src/nix/hash.ts` → `nix`), or undefined outside src/. */
export function roomOf(file: string): string | undefined {
  const parts = file.split('/');
  if (parts[0] !== 'src' || parts.length < 3) return undefined;
  return parts[1];
}

/** Checks a set of modules' imports against the layer order and for cycles. */
export function checkImports(
  imports: readonly Import[],
  layers: readonly string[] = LAYERS,
  allowed: ReadonlyMap<string, string> = ALLOWED_UPWARD,
): Violation[] {
  const violations: Violation[] = [];
  const rank = new Map(layers.map((r, i) => [r, i]));
  const used = new Set<string>();
  const where = (i: Import): string => `${i.from}:${i.line}`;
  for (const i of imports) {
    const a = roomOf(i.from);
    const b = roomOf(i.to);
    if (a !== undefined && b === undefined) {
      // src/ is shipped on its own: it never reaches into test/, bench/ or scripts/.
      violations.push({ kind: 'outside-src', message: `${where(i)}: import '${i.specifier}' (${i.to}) leaves src/` });
      continue;
    }
    if (a === undefined || b === undefined || a === b) continue;
    const ra = rank.get(a);
    const rb = rank.get(b);
    if (ra === undefined || rb === undefined) {
      const room = ra === undefined ? a : b;
      violations.push({ kind: 'unknown-room', message: `${where(i)}: room src/${room} is not in the layer order (scripts/check-layers.ts LAYERS)` });
      continue;
    }
    if (rb > ra) {
      const key = `${i.from} -> ${i.to}`;
      if (allowed.has(key)) {
        used.add(key);
        continue;
      }
      violations.push({
        kind: 'upward',
        message: `${where(i)}: upward import '${i.specifier}' (${i.to}): ${a} may not import ${b}, which is above it in the layer order`,
      });
    }
  }
  for (const key of allowed.keys()) {
    if (!used.has(key)) violations.push({ kind: 'stale-allowance', message: `allow-list entry '${key}' matches no upward import: remove it` });
  }
  for (const cycle of cycles(imports)) {
    violations.push({ kind: 'cycle', message: `import cycle: ${cycle.join(' -> ')} -> ${cycle[0]}` });
  }
  return violations;
}

/** The import cycles among the modules (one per strongly connected component, or a module importing itself). */
export function cycles(imports: readonly Import[]): string[][] {
  const edges = new Map<string, string[]>();
  for (const i of imports) {
    if (!edges.has(i.from)) edges.set(i.from, []);
    if (!edges.has(i.to)) edges.set(i.to, []);
    edges.get(i.from)!.push(i.to);
  }
  // Tarjan's strongly connected components, iterative.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const found: string[][] = [];
  for (const root of [...edges.keys()].sort()) {
    if (index.has(root)) continue;
    const work: [string, number][] = [[root, 0]];
    index.set(root, next);
    low.set(root, next++);
    stack.push(root);
    onStack.add(root);
    while (work.length > 0) {
      const top = work[work.length - 1]!;
      const [v, k] = top;
      const out = edges.get(v)!;
      if (k < out.length) {
        top[1] = k + 1;
        const w = out[k]!;
        if (!index.has(w)) {
          index.set(w, next);
          low.set(w, next++);
          stack.push(w);
          onStack.add(w);
          work.push([w, 0]);
        } else if (onStack.has(w)) {
          low.set(v, Math.min(low.get(v)!, index.get(w)!));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1]![0];
        low.set(parent, Math.min(low.get(parent)!, low.get(v)!));
      }
      if (low.get(v) === index.get(v)) {
        const scc: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          scc.push(w);
        } while (w !== v);
        if (scc.length > 1 || out.includes(v)) found.push(cyclePath(scc, edges));
      }
    }
  }
  return found;
}

/** One concrete cycle through a strongly connected component, starting at its first module by name. */
function cyclePath(scc: string[], edges: Map<string, string[]>): string[] {
  const members = new Set(scc);
  const start = [...scc].sort()[0]!;
  // Breadth-first from start back to start inside the component.
  const prev = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    for (const w of edges.get(v)!) {
      if (!members.has(w)) continue;
      if (w === start) {
        const pathBack = [v];
        while (pathBack[0] !== start) pathBack.unshift(prev.get(pathBack[0]!)!);
        return pathBack;
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start];
}

/** The TypeScript/JavaScript modules under `dir` (repository-relative), generated code included. */
export function modulesUnder(root: string, dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const r = path.posix.join(rel, name);
      if (statSync(path.join(root, r)).isDirectory()) walk(r);
      else if (/\.(ts|mts)$/.test(name) && !name.endsWith('.d.ts')) out.push(r);
    }
  };
  walk(dir);
  return out;
}

/** Reads every module under src/ of the tree at `root` and checks it. */
export function checkTree(root: string, layers?: readonly string[], allowed?: ReadonlyMap<string, string>): Violation[] {
  const exists = (p: string): boolean => {
    try {
      return statSync(path.join(root, p)).isFile();
    } catch {
      return false;
    }
  };
  const imports = modulesUnder(root, 'src').flatMap((f) => importsOf(f, readFileSync(path.join(root, f), 'utf8'), exists));
  return checkImports(imports, layers, allowed);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // The tree to check: the argument, or this repository.
  const root = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..'));
  const violations = checkTree(root);
  for (const v of violations) console.error(v.message);
  if (violations.length > 0) {
    console.error(`check:layers: ${violations.length} violation(s); layer order (lowest first): ${LAYERS.join(' → ')}`);
    process.exit(1);
  }
  console.log(`check:layers: ok (${LAYERS.join(' → ')})`);
}
