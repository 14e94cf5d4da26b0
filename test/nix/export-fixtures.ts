/** Real store paths for the export/import tests (built in the host store once; deterministic contents). */
import { parseDumpDb } from './dump-db.ts';
import { MK_DRV, instantiate, realise, runNix } from '../helpers/nix.ts';

export const EXPORT_EXPR = `
let ${MK_DRV} in rec {
  dep = mk { name = "hx-dep"; script = ''
    /bin/mkdir -p $out/sub/deeper
    echo hello > $out/sub/file
    : > $out/empty
    printf '#!/bin/sh\\necho run\\n' > $out/run; /bin/chmod +x $out/run
    /bin/ln -s sub/file $out/link
    /usr/bin/yes hydrant | /usr/bin/head -c 3000001 > $out/sub/deeper/big
  ''; };
  app = mk { name = "hx-app"; script = ''
    /bin/mkdir $out
    echo \${dep} > $out/ref
    echo $out > $out/self
  ''; deps = [ dep ]; };
  single = mk { name = "hx-single"; script = "echo single > $out"; };
}`;

export interface PathInfoJson {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string;
}

export interface ExportFixtures {
  dep: string;
  app: string;
  single: string;
  drv: string;
}

let cached: Promise<ExportFixtures> | null = null;

export function exportFixtures(): Promise<ExportFixtures> {
  cached ??= (async () => {
    const drvs = await instantiate(EXPORT_EXPR, ['dep', 'app', 'single']);
    const [dep, app, single] = await realise(drvs);
    return { dep: dep!, app: app!, single: single!, drv: drvs[1]! };
  })();
  return cached;
}

/**
 * Per-path metadata from `nix-store --dump-db` (exact for .drv paths too: `nix path-info`
 * takes a .drv argument to mean its outputs), with the hash in SRI like path-info --json.
 */
export async function hostPathInfo(paths: string[]): Promise<PathInfoJson[]> {
  const { stdout } = await runNix('nix-store', ['--dump-db', ...paths]);
  return parseDumpDb(stdout.toString('utf8')).map((e) => ({
    path: e.path,
    narHash: e.narHash.toSri(),
    narSize: e.narSize,
    references: e.references,
    ...(e.deriver ? { deriver: e.deriver } : {}),
  }));
}
