import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { runCli } from '../helpers/cli.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';

/** Whether a non-blocking exclusive flock on `path` would be refused (another process holds it). */
function lockedElsewhere(path: string): boolean {
  return spawnSync('flock', ['--nonblock', '--conflict-exit-code', '75', path, 'true']).status === 75;
}

/**
 * Hydra's queue runners lock `<hydraDataDir>/queue-runner/lock` with flock:
 * the Rust runner flocks that file with LOCK_EX|LOCK_NB
 * (subprojects/hydra-queue-runner/src/lock_file.rs:12, `file.try_lock()`;
 * the path from src/config.rs:352 `hydra_data_dir.join("queue-runner/lock")`),
 * the C++ runner takes a Nix PathLocks on it (src/hydra-queue-runner/hydra-queue-runner.cc:532-537),
 * which flocks `lock.lock`, and refuses to start with "hydra-queue-runner is
 * already running" (hydra-queue-runner.cc:807-809).
 */
describe("Hydra's queue-runner lock file", () => {
  let db: TestDatabase;
  let other: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    other = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
    await other.drop();
  });

  it('is held while Hydrant runs, refuses a second runner on the same hydraDataDir, and is free once stopped', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-lockfile-'));
    const runner = await InProcessRunner.start(db.url, dir, { tokenPaths: [] });
    try {
      // What Hydra's Rust runner (lock) and C++ runner (lock.lock) would try: both refused.
      expect(lockedElsewhere(join(dir, 'queue-runner', 'lock'))).toBe(true);
      expect(lockedElsewhere(join(dir, 'queue-runner', 'lock.lock'))).toBe(true);
      // Another Hydrant on another database but the same Hydra data directory is refused.
      await expect(InProcessRunner.start(other.url, dir, { tokenPaths: [] })).rejects.toMatchObject({ code: 'RUNNER_LOCK_FILE' });
    } finally {
      await runner.daemon.stop();
    }
    expect(lockedElsewhere(join(dir, 'queue-runner', 'lock'))).toBe(false);
    expect(lockedElsewhere(join(dir, 'queue-runner', 'lock.lock'))).toBe(false);
  });

  it('refuses to start, with one clear line, while another process (Hydra\'s runner) holds it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-lockfile-'));
    mkdirSync(join(dir, 'queue-runner'));
    // Stands in for Hydra's Rust runner: an exclusive flock on queue-runner/lock held until its stdin closes.
    const hydra = spawn('flock', [join(dir, 'queue-runner', 'lock'), 'sh', '-c', 'echo held; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise((resolve) => hydra.stdout.once('data', resolve));
    try {
      const config = join(dir, 'runner.toml');
      writeFileSync(config, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\nhttpListen = ""\n`);
      const r = await runCli(['serve', '--config', config]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/RUNNER_LOCK_FILE: .*queue-runner\/lock is locked: Hydra's queue runner \(or another Hydrant\) is already running/);
      // Its database lock was released on the way out: the next runner gets it.
      const { rows } = await db.pool.query(`select count(*)::int as n from pg_locks where locktype = 'advisory' and database = (select oid from pg_database where datname = current_database())`);
      expect(rows[0].n).toBe(0);
    } finally {
      hydra.stdin.end();
    }
  });
});
