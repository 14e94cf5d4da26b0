import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface QueryOutcome {
  ok: boolean;
  /** SQLSTATE, or the error message when there is none. */
  error?: string;
}

/**
 * Runs each (url, statement) in a separate Node process as another user
 * (uid/gid), as a local attacker would, and reports what happened.
 */
export async function queriesAs(user: { uid: number; gid: number }, tries: { url: string; sql: string }[]): Promise<QueryOutcome[]> {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-as-user-'));
  chmodSync(dir, 0o755);
  const script = join(dir, 'try.cjs');
  writeFileSync(
    script,
    `const pg = require(${JSON.stringify(createRequire(import.meta.url).resolve('pg'))});
(async () => {
  const out = [];
  for (const t of JSON.parse(process.env.TRIES)) {
    const c = new pg.Client({ connectionString: t.url });
    try { await c.connect(); await c.query(t.sql); out.push({ ok: true }); }
    catch (e) { out.push({ ok: false, error: e.code || e.message }); }
    finally { await c.end().catch(() => {}); }
  }
  process.stdout.write(JSON.stringify(out));
})();
`,
    { mode: 0o644 },
  );
  try {
    return await new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [script], { ...user, cwd: dir, env: { PATH: process.env.PATH, TRIES: JSON.stringify(tries) }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr.on('data', (b: Buffer) => (err += b.toString()));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as QueryOutcome[]) : reject(new Error(`exit ${code}: ${err}`))));
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
