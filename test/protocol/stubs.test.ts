import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');
const committed = path.join(root, 'src/protocol/gen');

async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const rel = path.join(prefix, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out.sort();
}

describe('generated protocol stubs', () => {
  let tmp: string | undefined;
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('match what runner.proto generates (run `npm run proto` after editing it)', async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'hydrant-proto-'));
    // The same template as `npm run proto`, written under the temp dir instead.
    await run(path.join(root, 'node_modules/.bin/buf'), ['generate', '--template', 'src/protocol/buf.gen.yaml', '-o', tmp], {
      cwd: root,
    });
    const fresh = path.join(tmp, 'src/protocol/gen');
    const files = await listFiles(fresh);
    expect(files.length).toBeGreaterThan(0);
    expect(await listFiles(committed)).toEqual(files);
    for (const f of files) {
      const want = await readFile(path.join(fresh, f), 'utf8');
      const have = await readFile(path.join(committed, f), 'utf8');
      expect(have === want, `src/protocol/gen/${f} is stale: run \`npm run proto\``).toBe(true);
    }
  });
});
