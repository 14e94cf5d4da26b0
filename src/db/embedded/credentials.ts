import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EmbeddedCredentialsError } from '../../errors/index.ts';

/**
 * The embedded database's passwords, random per state directory, in
 * `<stateDir>/embedded-db/` (mode 700; files mode 600): `admin.password` for
 * the superuser `hydrant`, `runner.password` for `hydrant_runner`.
 */
export interface Credentials {
  readonly admin: string;
  readonly runner: string;
}

export const ADMIN_ROLE = 'hydrant';
export const RUNNER_ROLE = 'hydrant_runner';
/** What versions before random passwords used; accepted once, to upgrade. */
export const LEGACY_PASSWORD = 'hydrant';

const PASSWORD = /^[0-9a-f]{64}$/;

/** Where the credentials and the server mark live; private to this process's user. */
export function privateDir(stateDir: string): string {
  const dir = join(stateDir, 'embedded-db');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  return dir;
}

function ensurePassword(file: string): string {
  if (existsSync(file)) {
    chmodSync(file, 0o600);
    const password = readFileSync(file, 'utf8').trim();
    if (!PASSWORD.test(password)) throw new EmbeddedCredentialsError(`${file} does not hold a Hydrant database password; restore it, or remove the state directory's postgres/ and embedded-db/ to start a new database`);
    return password;
  }
  const password = randomBytes(32).toString('hex');
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, `${password}\n`, { mode: 0o600, flag: 'w' });
  renameSync(tmp, file);
  return password;
}

export function loadCredentials(stateDir: string): Credentials {
  const dir = privateDir(stateDir);
  return { admin: ensurePassword(join(dir, 'admin.password')), runner: ensurePassword(join(dir, 'runner.password')) };
}
