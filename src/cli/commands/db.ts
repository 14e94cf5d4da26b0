import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describeCatalog, diffCatalogs } from '../../db/catalog.ts';
import { createPool } from '../../db/pool.ts';
import { checkSchema, ensureSchema } from '../../db/schema.ts';
import { HYDRA_SCHEMA_VERSION } from '../../db/required-schema.ts';
import { withDatabase } from '../../db/url.ts';
import type { CommandArgs } from '../command.ts';
import { databaseLine, namedDatabaseConfig, openCommandDatabase } from '../database.ts';

export async function run({ values, positionals }: CommandArgs): Promise<number> {
  const action = positionals[0];
  if (action !== 'check' && action !== 'init' && action !== 'compare') {
    process.stderr.write(`hydrant db: unknown action '${action ?? ''}' (check, init or compare)\n`);
    return 2;
  }
  const config = namedDatabaseConfig('db', values);
  const database = await openCommandDatabase(config);
  process.stdout.write(databaseLine(database, config));
  try {
    switch (action) {
      case 'check': {
        const version = await checkSchema(database.pool);
        process.stdout.write(`schema ok (${versionText(version)})\n`);
        return 0;
      }
      case 'init': {
        const s = await ensureSchema(database.pool);
        process.stdout.write(`${s.created ? 'created' : 'accepted existing'} Hydra schema (${versionText(s.version)})\n`);
        return 0;
      }
      case 'compare':
        return await compare(database.url, values['hydra-sql'] as string | undefined);
      default:
        process.stderr.write(`hydrant db: unknown action '${action ?? ''}' (check, init or compare)\n`);
        return 2;
    }
  } finally {
    await database.close();
  }
}

/**
 * Hydra's hydra.sql creates the SchemaVersion table empty; hydra-init loads
 * it and then inserts the newest migration's number, and refuses to run
 * without that row. No row (read as 0) means hydra.sql was loaded by hand.
 */
function versionText(version: number): string {
  if (version > 0) return `SchemaVersion ${version}`;
  return `SchemaVersion has no row: hydra.sql was loaded without hydra-init, which needs one; the columns Hydrant uses are present. If it is Hydra's current hydra.sql: insert into SchemaVersion (version) values (${HYDRA_SCHEMA_VERSION})`;
}

async function compare(url: string, hydraSqlPath: string | undefined): Promise<number> {
  if (!hydraSqlPath) {
    process.stderr.write('hydrant db compare: --hydra-sql FILE is required\n');
    return 2;
  }
  const hydraSql = readFileSync(hydraSqlPath, 'utf8');
  const suffix = randomBytes(4).toString('hex');
  const names = [`cmp_hydra_${suffix}`, `cmp_hydrant_${suffix}`];
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    for (const n of names) await admin.query(`create database ${n} template template0`);
    // Hydra's hydra-init loads hydra.sql and records the newest migration's version.
    const hydra = new pg.Client({ connectionString: withDatabase(url, names[0]!) });
    await hydra.connect();
    await hydra.query(`begin; ${hydraSql}; insert into SchemaVersion (version) values (${HYDRA_SCHEMA_VERSION}); commit;`);
    const ours = createPool(withDatabase(url, names[1]!), { max: 1 });
    await ensureSchema(ours);
    const diff = diffCatalogs(await describeCatalog(hydra), await describeCatalog(ours));
    await hydra.end();
    await ours.end();
    process.stdout.write(diff.length === 0 ? 'identical: Hydrant creates the same schema as hydra.sql\n' : `${diff.join('\n')}\n`);
    return diff.length === 0 ? 0 : 1;
  } finally {
    for (const n of names) await admin.query(`drop database if exists ${n} with (force)`).catch(() => {});
    await admin.end();
  }
}
