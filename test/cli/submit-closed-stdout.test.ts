import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hydrantArgv } from '../../src/util/hydrant-bin.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';

describe('hydrant submit with a closed stdout (as in `hydrant submit … | head`)', () => {
  const db = useTestDatabase();

  it('commits, then ends quietly with exit code 0', async () => {
    const nonce = randomBytes(4).toString('hex');
    const drvs = await instantiate(`let ${MK_DRV} in {
      a = mk { name = "closed-a-${nonce}"; script = "echo > $out"; };
      b = mk { name = "closed-b-${nonce}"; script = "echo > $out"; };
    }`, ['a', 'b']);
    const child = spawn(process.execPath, hydrantArgv(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', '--create', ...drvs]), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // The reader goes away before the report is written: every write to stdout gets EPIPE.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const rows = (await db.pool.query('select drvpath from builds order by drvpath')).rows.map((r) => r.drvpath);
    expect(rows).toEqual([...drvs].sort());
  }, 60_000);
});
