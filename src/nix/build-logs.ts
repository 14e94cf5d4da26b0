import { basename, join } from 'node:path';

/** Hydra's log location: `<hydraDataDir>/build-logs/<first 2 chars of the drv basename>/<the rest>`. */
export function buildLogPath(hydraDataDir: string, drvPath: string): string {
  const base = basename(drvPath);
  return join(hydraDataDir, 'build-logs', base.slice(0, 2), base.slice(2));
}
