import type { Realisation } from '../nix/realisation.ts';
import { NixFormatError, PathNotInStoreError } from '../errors/index.ts';
import { type Hash, parseHash } from '../nix/hash.ts';
import { parseStorePath } from '../nix/store-path.ts';
import { runNix } from '../nix/tools.ts';
import { servePool } from '../nix/serve-session.ts';
import { hostStore } from '../nix/private-store.ts';

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
 * Path infos from the local store (one entry per distinct path), read over
 * a `nix-store --serve` session rather than a Nix process per call.
 * `recursive`: the whole closure of `paths`. Throws PathNotInStoreError if
 * any path is not valid.
 */
export async function queryPathInfos(paths: readonly string[], options: { recursive?: boolean } = {}): Promise<LocalPathInfo[]> {
  const unique = [...new Set(paths)];
  if (unique.length === 0) return [];
  return servePool(hostStore).use(async (session) => {
    // Only a closure query needs its roots checked first; QueryPathInfos leaves an invalid path out, which the count below catches.
    if (options.recursive) {
      const valid = new Set(await session.queryValid(unique));
      const invalid = unique.filter((p) => !valid.has(p));
      if (invalid.length > 0) throw new PathNotInStoreError(invalid);
    }
    const all = options.recursive ? await session.queryClosure(unique, false) : unique;
    const infos = await session.queryPathInfos(all);
    if (infos.length !== all.length) {
      const got = new Set(infos.map((i) => i.path));
      throw new PathNotInStoreError(all.filter((p) => !got.has(p)));
    }
    return infos.map((i) =>
      toInfo({ path: i.path, narHash: i.narHash, narSize: i.narSize, references: i.references, deriver: i.deriver ?? undefined, ca: i.ca ?? undefined, signatures: i.sigs }),
    );
  });
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
