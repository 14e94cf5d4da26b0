import { updateGcRoots } from '../../cache/gc-roots-update.ts';
import { defaultRootsDir } from '../../publish/gc-roots.ts';
import {
  databaseLine, NAMED_DB_OPTIONS, NAMED_DB_OPTIONS_HELP, namedDatabaseConfig, openCommandDatabase, type Command,
} from '../command.ts';

export const gcRoots: Command = {
  name: 'gc-roots',
  summary: "keep the GC roots directory as Hydra's hydra-update-gc-roots does",
  usage: 'hydrant gc-roots [--roots-dir DIR] [--dry-run] [options]',
  help: `Makes a root (an empty file named by the store path's basename) for the
outputs of every build Hydra keeps and the derivations of its unfinished and
failed ones: unfinished builds, builds marked keep, the builds of each
jobset's unfinished evaluations and newest keepnr evaluations, and the newest
successful build of each of their jobs. Roots no build keeps are removed
once they are a day old. Running it again changes nothing: safe to run from
a timer (Hydra runs it at 02:15 and 14:15).

      --roots-dir DIR   the directory (default: the config's rootsDir, else
                        /nix/var/nix/gcroots/per-user/$USER/hydra-roots)
      --dry-run         print what would change; change nothing
${NAMED_DB_OPTIONS_HELP}`,
  options: { ...NAMED_DB_OPTIONS, 'roots-dir': { type: 'string' }, 'dry-run': { type: 'boolean' } },
  async run({ values, positionals }) {
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
  },
};
