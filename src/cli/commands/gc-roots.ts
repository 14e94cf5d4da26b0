import { updateGcRoots } from '../../cache/gc-roots-update.ts';
import { defaultRootsDir } from '../../publish/gc-roots.ts';
import type { CommandArgs } from '../command.ts';
import { databaseLine, namedDatabaseConfig, openCommandDatabase } from '../database.ts';

export async function run({ values, positionals }: CommandArgs): Promise<number> {
  if (positionals.length > 0) {
    process.stderr.write(`hydrant gc-roots: unexpected argument '${positionals[0]}'\n`);
    return 2;
  }
  const config = namedDatabaseConfig('gc-roots', values);
  const rootsDir = (values['roots-dir'] as string | undefined) ?? config.rootsDir ?? defaultRootsDir();
  const dryRun = values['dry-run'] === true;
  const database = await openCommandDatabase(config);
  const out = (s: string) => process.stdout.write(`${s}\n`);
  try {
    out(databaseLine(database, config).trimEnd());
    const r = await updateGcRoots({ pool: database.pool, rootsDir, dryRun });
    const verb = (done: string, would: string) => (dryRun ? would : done);
    for (const n of r.created) out(`${verb('added', 'would add')} root ${n}`);
    for (const n of r.removed) out(`${verb('removed', 'would remove')} root ${n}`);
    if (r.junk.length > 0) out(`ignored ${r.junk.length} entries that name no store path: ${r.junk.slice(0, 5).map((s) => JSON.stringify(s)).join(', ')}${r.junk.length > 5 ? ', …' : ''}`);
    if (r.invalid.length > 0) out(`ignored ${r.invalid.length} paths in the database that are not store paths: ${r.invalid.slice(0, 5).join(', ')}`);
    out(
      `${rootsDir}: ${r.builds} builds kept, ${r.wanted} roots wanted; ${verb('added', 'would add')} ${r.created.length}, ${verb('removed', 'would remove')} ${r.removed.length}, kept ${r.recent.length} unwanted roots younger than a day${dryRun ? ' (dry run: nothing changed)' : ''}`,
    );
    return 0;
  } finally {
    await database.close();
  }
}
