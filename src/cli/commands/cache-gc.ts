import { existsSync } from 'node:fs';
import { DirectoryStorage } from '../../cache/directory-storage.ts';
import { checkPrefix, collectCacheGarbage, parseDuration, type CacheGcReport, type Tally } from '../../cache/gc.ts';
import { readRootsDir } from '../../cache/gc-roots-dir.ts';
import { localClosure } from '../../cache/local-closure.ts';
import { S3Storage } from '../../cache/s3-storage.ts';
import type { CacheStorage } from '../../cache/storage.ts';
import { parseStoreUri } from '../../cache/store-uri.ts';
import { loadRunnerConfig } from '../../config/runner-config.ts';
import { ConfigError } from '../../errors/index.ts';
import { defaultRootsDir } from '../../publish/gc-roots.ts';
import { WorkerPool } from '../../workers/pool.ts';
import { withRoom } from '../../workers/with-room.ts';
import type { CommandArgs } from '../command.ts';
import { progressBar } from '../progress-bar.ts';

export async function run({ values, positionals }: CommandArgs): Promise<number> {
  if (positionals[0] !== 'gc' || positionals.length !== 1) {
    process.stderr.write(`hydrant cache: unknown action '${positionals.join(' ')}' (gc)\n`);
    return 2;
  }
  const uri = values.store as string | undefined;
  if (!uri) throw new ConfigError('hydrant cache gc: --store URI is required');
  const prefix = (values.prefix as string | undefined) ?? '';
  checkPrefix(prefix);
  const minAgeText = (values['min-age'] as string | undefined) ?? '1h';
  const minAgeMs = parseDuration(minAgeText);
  const dryRun = values['dry-run'] === true;
  const config = values.config !== undefined ? loadRunnerConfig(values.config as string) : undefined;
  const rootsDir = (values['roots-dir'] as string | undefined) ?? config?.rootsDir ?? defaultRootsDir();
  const store = parseStoreUri(uri);

  const { roots, junk } = await readRootsDir(rootsDir);
  const out = (s: string) => process.stdout.write(`${s}\n`);
  if (junk.length > 0) out(`ignored ${junk.length} entr${junk.length === 1 ? 'y' : 'ies'} of ${rootsDir} that name no store path: ${shortList(junk)}`);

  let storage: CacheStorage;
  if (store.scheme === 'file') {
    // Opening a directory storage makes the directory: a mistyped path must not become an empty cache.
    if (!existsSync(store.path)) throw new ConfigError(`hydrant cache gc: no cache at ${store.path}`);
    storage = await DirectoryStorage.open(store.path);
  } else storage = await S3Storage.open(store, { credentialsFile: config?.awsCredentialsFile });
  const pool = new WorkerPool({ threads: 1 });
  const bar = progressBar(process.stderr);
  let report: CacheGcReport;
  try {
    report = await collectCacheGarbage({
      storage,
      prefix,
      roots: roots.map((r) => r.name),
      minAgeMs,
      dryRun,
      ...(values['no-local-store'] === true
        ? {}
        : {
            localClosure: (paths: readonly string[]) =>
              localClosure(paths).catch((e: unknown) => {
                // No Nix here: the cache's own narinfos are all there is to follow.
                out(`local store not available (${(e as Error).message.split('\n')[0]}): roots the cache lacks are not followed`);
                return [];
              }),
          }),
      decode: async (body, encoding) => {
        if (encoding === undefined || encoding === 'identity') return body;
        if (encoding !== 'xz' && encoding !== 'bzip2' && encoding !== 'br' && encoding !== 'zstd') throw new Error(`Content-Encoding '${encoding}' cannot be read`);
        // Narinfos are read 16 at a time; the pool queues only a few tasks.
        return withRoom(pool, () => pool.decompress(body, encoding));
      },
      onProgress: (phase, done, total) => bar.update(phase === 'read' ? 'reading narinfos' : dryRun ? 'listing' : 'deleting', done, total),
    });
  } finally {
    bar.done();
    await storage.close();
    await pool.close();
  }

  const where = `${storage.location}${prefix ? ` (prefix ${prefix})` : ''}`;
  if (dryRun) for (const k of report.deletedKeys) out(`would delete ${k}`);
  out(`cache: ${where}${dryRun ? ' (dry run: nothing deleted)' : ''}`);
  out(`roots: ${roots.length} in ${rootsDir}, ${report.rootsMissing.length} of them not in the cache; ${report.livePaths} live paths${report.liveThroughLocalStore > 0 ? ` (${report.liveThroughLocalStore} reached through the local store)` : ''}`);
  out(`kept: ${tally(report.kept)} live`);
  if (report.young.count > 0) out(`kept: ${tally(report.young)} dead but younger than ${minAgeText}`);
  if (report.unknown.length > 0) out(`kept: ${report.unknown.length} objects of no binary-cache kind: ${shortList(report.unknown)}`);
  const k = report.deletedByKind;
  out(
    `${dryRun ? 'would delete' : 'deleted'}: ${tally(report.deleted)} (${k.narinfo} narinfos, ${k.nar} NARs, ${k.listing} listings, ${k.log} logs, ${k.realisation} realisations); ${dryRun ? 'would free' : 'freed'} ${bytes(report.deleted.bytes)}`,
  );
  if (report.aborted.length > 0 || report.uploadsInProgress > 0) {
    out(`${dryRun ? 'would abort' : 'aborted'}: ${report.aborted.length} unfinished multipart uploads older than ${minAgeText}${report.uploadsInProgress > 0 ? ` (${report.uploadsInProgress} younger left alone)` : ''}`);
  }
  for (const f of report.failures) process.stderr.write(`hydrant cache gc: could not delete ${f.key}: ${f.reason}\n`);
  return report.failures.length > 0 ? 1 : 0;
}

function tally(t: Tally): string {
  return `${t.count} object${t.count === 1 ? '' : 's'}, ${bytes(t.bytes)}`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(1)} ${units[i]} (${n} bytes)`;
}

function shortList(items: readonly string[]): string {
  const shown = items.slice(0, 5).map((s) => JSON.stringify(s));
  return `${shown.join(', ')}${items.length > 5 ? `, … (${items.length - 5} more)` : ''}`;
}
