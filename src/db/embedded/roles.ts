import pg from 'pg';
import { EmbeddedCredentialsError } from '../../errors/index.ts';
import { sql } from '../sql.ts';
import { ADMIN_ROLE, LEGACY_PASSWORD, RUNNER_ROLE, type Credentials } from './credentials.ts';

const INVALID_PASSWORD = '28P01';

function url(role: string, password: string, port: number, database: string): string {
  return `postgres://${role}:${password}@127.0.0.1:${port}/${database}`;
}

export const runnerUrl = (c: Credentials, port: number): string => url(RUNNER_ROLE, c.runner, port, 'hydra');
export const adminUrl = (c: Credentials, port: number, database = 'postgres'): string => url(ADMIN_ROLE, c.admin, port, database);

async function connect(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  return client;
}

async function setPassword(client: pg.Client, file: string, password: string): Promise<void> {
  await client.query(sql('embedded/set-password'), [password]);
  await client.query(sql(file));
}

/**
 * The superuser's connection with the state directory's admin password. A
 * database made by an older version still has the fixed password: it is
 * replaced at once (also after a crash between writing the file and that).
 */
async function connectAdmin(c: Credentials, port: number, dataDir: string, stateDir: string): Promise<pg.Client> {
  try {
    return await connect(adminUrl(c, port));
  } catch (err) {
    if ((err as { code?: string }).code !== INVALID_PASSWORD) throw err;
  }
  const legacy = await connect(url(ADMIN_ROLE, LEGACY_PASSWORD, port, 'postgres')).catch(() => null);
  if (!legacy) {
    throw new EmbeddedCredentialsError(
      `the database in ${dataDir} does not accept the password in ${stateDir}/embedded-db/admin.password; restore that file, or remove ${stateDir}/postgres to start a new database`,
    );
  }
  try {
    await setPassword(legacy, 'embedded/admin-password', c.admin);
  } finally {
    await legacy.end();
  }
  return connect(adminUrl(c, port));
}

/**
 * Roles and database, idempotent on every start: the runner's role (not a
 * superuser) with its password, the hydra database owned by it, and what an
 * older version's superuser owned in it handed over.
 */
export async function ensureRoles(c: Credentials, port: number, dataDir: string, stateDir: string): Promise<void> {
  const admin = await connectAdmin(c, port, dataDir, stateDir);
  try {
    await setPassword(admin, 'embedded/runner-role', c.runner);
    if ((await admin.query(sql('embedded/hydra-exists'))).rowCount === 0) await admin.query(sql('embedded/create-hydra'));
    else await admin.query(sql('embedded/own-hydra'));
  } finally {
    await admin.end();
  }
  const hydra = await connect(adminUrl(c, port, 'hydra'));
  try {
    await hydra.query(sql('embedded/hand-over-objects'));
  } finally {
    await hydra.end();
  }
}
