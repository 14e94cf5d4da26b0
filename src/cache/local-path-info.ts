import { NixCommandError, NixFormatError, PathNotInStoreError } from '../errors/index.ts';
import { type Hash, parseHash } from '../nix/hash.ts';
import { parseStorePath } from '../nix/store-path.ts';
import { runNix } from '../nix/tools.ts';

/** What the local store records about a path: everything a narinfo repeats from it. */
export interface LocalPathInfo {
  path: string;
  narHash: Hash;
  narSize: number;
  /** Full store paths (a self-reference included). */
  references: string[];
  /** Full path of the .drv, when known. */
  deriver?: string;
  /** Content address, for content-addressed paths. */
  ca?: string;
  /** Signatures the store already holds (`keyname:base64`). */
  signatures: string[];
}

/** One `nix path-info --json` entry as Nix 2.8 prints it. */
interface PathInfoJson {
  path: string;
  valid?: boolean;
  narHash?: string;
  narSize?: number;
  references?: string[];
  deriver?: string;
  ca?: string;
  signatures?: string[];
}

/** Paths per `nix path-info` call: far below the argument-length limit. */
const BATCH = 500;

function toInfo(j: PathInfoJson): LocalPathInfo {
  const bad = (msg: string) => new NixFormatError('path-info', `${j.path}: ${msg}`);
  if (typeof j.narHash !== 'string' || typeof j.narSize !== 'number') throw bad('no narHash/narSize');
  parseStorePath(j.path);
  const references = j.references ?? [];
  for (const r of references) parseStorePath(r);
  const info: LocalPathInfo = {
    path: j.path,
    narHash: parseHash(j.narHash),
    narSize: j.narSize,
    references,
    signatures: j.signatures ?? [],
  };
  if (j.deriver) info.deriver = parseStorePath(j.deriver).path;
  if (j.ca) info.ca = j.ca;
  return info;
}

/**
 * Path infos from the local store, in `nix path-info`'s order (one entry per
 * distinct path). `recursive`: the whole closure of `paths`. Throws
 * PathNotInStoreError if any path is not valid.
 */
export async function queryPathInfos(paths: readonly string[], options: { recursive?: boolean } = {}): Promise<LocalPathInfo[]> {
  const byPath = new Map<string, LocalPathInfo>();
  const invalid: string[] = [];
  const unique = [...new Set(paths)];
  for (let i = 0; i < unique.length; i += BATCH) {
    const args = ['path-info', '--json', ...(options.recursive ? ['--recursive'] : []), ...unique.slice(i, i + BATCH)];
    let stdout: Buffer;
    try {
      ({ stdout } = await runNix('nix', args));
    } catch (e) {
      // With --recursive an invalid path is an error rather than a `valid: false` entry: find which.
      if (!options.recursive || !(e instanceof NixCommandError) || !/is not valid/.test(e.stderr)) throw e;
      await queryPathInfos(unique.slice(i, i + BATCH)); // throws PathNotInStoreError naming them
      throw e;
    }
    let entries: PathInfoJson[];
    try {
      entries = JSON.parse(stdout.toString('utf8')) as PathInfoJson[];
    } catch (e) {
      throw new NixFormatError('path-info', 'nix path-info --json printed something that is not JSON', { cause: e });
    }
    for (const e of entries) {
      if (e.valid === false) invalid.push(e.path);
      else if (!byPath.has(e.path)) byPath.set(e.path, toInfo(e));
    }
  }
  if (invalid.length > 0) throw new PathNotInStoreError(invalid);
  return [...byPath.values()];
}

/** A store's realisation of one derivation output (the `.doi` files of a cache). */
export interface Realisation {
  /** `sha256:<hash modulo of the .drv, base16>!<output>` */
  id: string;
  /** Base name of the output path. */
  outPath: string;
  signatures: string[];
  /** id → base name of the output, for outputs this one's path depends on. */
  dependentRealisations: Record<string, string>;
}

/** The realisations the local store holds for a derivation's outputs (none for a derivation built without ca-derivations). */
export async function queryRealisations(drvPath: string): Promise<Realisation[]> {
  parseStorePath(drvPath);
  const { stdout } = await runNix('nix', ['realisation', 'info', '--json', drvPath]);
  const list = JSON.parse(stdout.toString('utf8')) as Partial<Realisation>[];
  return list.map((r) => {
    if (typeof r.id !== 'string' || typeof r.outPath !== 'string') throw new NixFormatError('realisation', `${drvPath}: entry without id or outPath`);
    return { id: r.id, outPath: r.outPath, signatures: r.signatures ?? [], dependentRealisations: r.dependentRealisations ?? {} };
  });
}
