import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { queueBuild } from './hydra-rows.ts';
import { instantiate, MK_DRV } from './nix.ts';

/**
 * Builds whose outcomes are known, for tests that disturb the runner while
 * they run: ok1 and ok2 succeed and bad fails, each after a sleep; needsBad
 * depends on bad (dependency failed), afterOk1 on ok1. Job → buildstatus.
 */
export const OUTCOMES = { ok1: 0, ok2: 0, bad: 1, needsBad: 2, afterOk1: 0 } as const;

/**
 * Instantiates the OUTCOMES jobs, each of the first three sleeping `seconds`
 * s, and `extra` jobs (job → build script); derivation names are made
 * unique with `tag` and a nonce. Returns job → .drv path.
 */
export async function instantiateOutcomes(tag: string, seconds: number, extra: Record<string, string> = {}): Promise<Record<string, string>> {
  const nonce = `${tag}-${randomBytes(4).toString('hex')}`;
  const scripts: Record<string, string> = {
    ok1: `/bin/sleep ${seconds}; echo ok1 > $out`,
    ok2: `/bin/sleep ${seconds}; echo ok2 > $out`,
    bad: `/bin/sleep ${seconds}; exit 1`,
    needsBad: '/bin/cat ${bad} > $out',
    afterOk1: '/bin/cat ${ok1} > $out',
    ...extra,
  };
  const names = Object.keys(scripts);
  const jobs = names.map((n) => `${n} = mk { name = "${n}-${nonce}"; script = "${scripts[n]}"; };`);
  const drvs = await instantiate(`let ${MK_DRV} in rec {\n${jobs.join('\n')}\n}`, names);
  return Object.fromEntries(names.map((n, i) => [n, drvs[i]!]));
}

/**
 * Queues one build per job (job → .drv path) with its derivation's outputs,
 * as Hydra's evaluator does, then notifies the runner. Returns job → build id.
 */
export async function queueJobs(db: Pick<pg.Pool, 'query'>, jobsetId: number, drvs: Record<string, string>): Promise<Record<string, number>> {
  const store = new LocalNixStore();
  const ids: Record<string, number> = {};
  for (const [job, drv] of Object.entries(drvs)) ids[job] = await queueBuild(db, jobsetId, drv, job, 'x86_64-linux', (await store.readDerivation(drv)).outputs);
  await db.query("notify builds_added, ''");
  return ids;
}
