import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Writes `text` as `name` in a fresh temporary directory; returns the file's path. */
export function configFile(text: string, name = 'config.toml'): string {
  const p = join(mkdtempSync(join(tmpdir(), 'hydrant-cfg-')), name);
  writeFileSync(p, text);
  return p;
}
