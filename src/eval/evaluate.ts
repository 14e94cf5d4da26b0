import { resolve } from 'node:path';
import { NixCommandError, NixEvaluationError, NixFormatError } from '../errors/index.ts';
import { JOB_DEFAULTS } from './job-defaults.ts';
import { runNix, runNixLines } from '../nix/tools.ts';

/**
 * A minimal evaluator in the spirit of Hydra's: the top-level attributes of
 * a Nix file (a function is called with `{}`) that are derivations become
 * jobs, with the meta attributes Hydra reads.
 */
export interface EvaluatedJob {
  job: string;
  drvPath: string;
  nixName: string;
  system: string;
  description: string | null;
  license: string | null;
  homepage: string | null;
  maintainers: string | null;
  /** meta.schedulingPriority (Hydra's default 100). */
  priority: number;
  timeout: number;
  maxSilent: number;
  isChannel: boolean;
}

interface MetaJson {
  name: string;
  system: string;
  description: string | null;
  license: string | null;
  homepage: string | null;
  maintainers: string | null;
  priority: number | null;
  timeout: number | null;
  maxSilent: number | null;
  isChannel: boolean;
}

// Reads only plain meta fields, so that functions in meta cannot break --strict --json.
// Given inline, with the file as --argstr (no temporary file, and any path works).
const META_EXPR = `{ file }:
  let
    v0 = import file;
    v = if builtins.isFunction v0 then v0 {} else v0;
    str = x: if builtins.isString x then x else if builtins.isAttrs x && x ? shortName then x.shortName else null;
    list = xs: if builtins.isList xs then builtins.concatStringsSep ", " (map (m: if builtins.isString m then m else m.email or m.name or "") xs) else str xs;
    int = x: if builtins.isInt x then x else null;
    jobs = builtins.filter (n: builtins.isAttrs v.\${n} && (v.\${n}.type or null) == "derivation") (builtins.attrNames v);
  in builtins.listToAttrs (map (n: let d = v.\${n}; m = d.meta or {}; in {
    name = n;
    value = {
      name = d.name; system = d.system;
      description = str (m.description or null); license = list (m.license or null);
      homepage = str (m.homepage or null); maintainers = list (m.maintainers or null);
      priority = int (m.schedulingPriority or null); timeout = int (m.timeout or null);
      maxSilent = int (m.maxSilent or null); isChannel = (m.isHydraChannel or false) == true;
    };
  }) jobs)`;

export async function evaluateJobs(file: string, only: readonly string[] = []): Promise<EvaluatedJob[]> {
  const path = resolve(file);
  const { stdout } = await nixEval(file, () => runNix('nix-instantiate', ['--eval', '--json', '--strict', '--expr', META_EXPR, '--argstr', 'file', path]));
  const meta = JSON.parse(stdout.toString('utf8')) as Record<string, MetaJson>;
  const names = only.length > 0 ? [...only] : Object.keys(meta).sort();
  for (const n of names) if (!meta[n]) throw new NixFormatError('evaluation', `${file} has no derivation attribute '${n}'`);
  if (names.length === 0) return [];
  const drvs = await nixEval(file, () => runNixLines('nix-instantiate', [path, ...names.flatMap((n) => ['-A', n])]));
  if (drvs.length !== names.length) throw new NixFormatError('evaluation', `expected ${names.length} derivations, nix-instantiate gave ${drvs.length}`);
  return names.map((job, i) => {
    const m = meta[job]!;
    return {
      job,
      // nix-instantiate prints `<drv>!<output>` for a derivation whose first output is not `out`.
      drvPath: drvs[i]!.replace(/![^/]*$/, ''),
      nixName: m.name,
      system: m.system,
      description: m.description,
      license: m.license,
      homepage: m.homepage,
      maintainers: m.maintainers,
      priority: m.priority ?? JOB_DEFAULTS.priority,
      timeout: m.timeout ?? JOB_DEFAULTS.timeout,
      maxSilent: m.maxSilent ?? JOB_DEFAULTS.maxSilent,
      isChannel: m.isChannel,
    };
  });
}

/**
 * Nix's error about the operator's file, first and whole (its headline, then
 * where), instead of the command line with Hydrant's wrapper expression.
 */
async function nixEval<T>(file: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (!(err instanceof NixCommandError) || err.exitCode === null) throw err;
    const text = err.stderr.trim();
    const from = text.search(/^error:/m);
    const message = from >= 0 ? text.slice(from) : `error: nix-instantiate exited with ${err.exitCode} evaluating ${file}${text ? `:\n${text}` : ''}`;
    throw new NixEvaluationError(message, { cause: err });
  }
}
