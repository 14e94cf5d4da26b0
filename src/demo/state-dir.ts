import { randomBytes } from 'node:crypto';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../errors/index.ts';
import { runNix } from '../nix/tools.ts';
import { accepts } from '../util/accepts.ts';

/** The bundled demo jobset (a Nix function of `{ nonce }`). */
export const DEMO_JOBSET = fileURLToPath(new URL('./jobset.nix', import.meta.url));

/** Name of the demo cache's signing key (Nix's `name:base64` key format). */
export const DEMO_KEY_NAME = 'hydrant-demo-1';

/** Where everything of one demo lives; all paths absolute. */
export interface DemoPaths {
  readonly root: string;
  /** The directory binary cache the runner publishes to. */
  readonly cacheDir: string;
  readonly keysDir: string;
  readonly secretKeyFile: string;
  readonly publicKeyFile: string;
  /** The builders' bearer token (mode 0600, new every run). */
  readonly tokenFile: string;
  /** Hydra's data directory: build logs. */
  readonly hydraDataDir: string;
  /** Runner log (unless --verbose). */
  readonly logFile: string;
  /** `<root>/builders`: one private store and one log per builder. */
  readonly buildersDir: string;
  /** The jobset evaluated: the bundled one applied to this state directory's nonce. */
  readonly jobsetFile: string;
  readonly nonce: string;
}

/**
 * Lays out a demo state directory, keeping what earlier runs left: the
 * embedded database (`postgres/`), `cache/`, `keys/` (generated once with
 * `nix-store --generate-binary-cache-key`) and the nonce that makes this
 * directory's derivations its own.
 */
export async function prepareStateDir(dir: string): Promise<DemoPaths> {
  const root = resolve(dir);
  // The cache's store URI carries the path as is (file://<dir>?params).
  if (/[?#&\s]/.test(root)) throw new ConfigError(`--state-dir ${root}: the path must not contain spaces, '?', '#' or '&'`);
  mkdirSync(root, { recursive: true });
  const keysDir = join(root, 'keys');
  const paths: DemoPaths = {
    root,
    cacheDir: join(root, 'cache'),
    keysDir,
    secretKeyFile: join(keysDir, `${DEMO_KEY_NAME}.sec`),
    publicKeyFile: join(keysDir, `${DEMO_KEY_NAME}.pub`),
    tokenFile: join(root, 'builder-token'),
    hydraDataDir: join(root, 'hydra'),
    logFile: join(root, 'demo.log'),
    buildersDir: join(root, 'builders'),
    jobsetFile: join(root, 'jobset.nix'),
    nonce: '',
  };
  for (const d of [paths.cacheDir, paths.hydraDataDir, paths.buildersDir]) mkdirSync(d, { recursive: true });
  mkdirSync(keysDir, { recursive: true, mode: 0o700 });
  chmodSync(keysDir, 0o700);

  if (!existsSync(paths.secretKeyFile) || !existsSync(paths.publicKeyFile)) {
    await runNix('nix-store', ['--generate-binary-cache-key', DEMO_KEY_NAME, paths.secretKeyFile, paths.publicKeyFile]);
  }
  chmodSync(paths.secretKeyFile, 0o600);

  writeFileSync(paths.tokenFile, randomBytes(32).toString('hex'), { mode: 0o600 });
  chmodSync(paths.tokenFile, 0o600);

  const nonceFile = join(root, 'demo-nonce');
  let nonce = existsSync(nonceFile) ? readFileSync(nonceFile, 'utf8').trim() : '';
  if (!/^[0-9a-f]{16}$/.test(nonce)) {
    nonce = randomBytes(8).toString('hex');
    writeFileSync(nonceFile, `${nonce}\n`);
  }
  writeFileSync(paths.jobsetFile, `# Written by hydrant demo: the bundled jobset with this state directory's nonce.\nimport ${JSON.stringify(DEMO_JOBSET)} { nonce = "${nonce}"; }\n`);
  return { ...paths, nonce };
}

/** Whether an executable `tool` is on the PATH. */
export function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => accepts((f: string) => accessSync(f, constants.X_OK), join(d || '.', tool)));
}

/**
 * NAR compression of the demo cache: zstd, which needs the `zstd` tool; xz
 * (compressed in-process) where that is missing, so the demo needs no more
 * than Nix.
 */
export function demoCompression(): 'zstd' | 'xz' {
  return onPath('zstd') ? 'zstd' : 'xz';
}

/** The runner's `remoteStoreAddr` entry for the demo cache. */
export function cacheStoreUri(p: DemoPaths, compression: 'zstd' | 'xz'): string {
  return `file://${p.cacheDir}?compression=${compression}&secret-key=${encodeURIComponent(p.secretKeyFile).replace(/%2F/g, '/')}`;
}
