import type pg from 'pg';
import { beforeAll } from 'vitest';

/** Creates the user, project and jobset that queued builds hang off, as Hydra's web UI would. */
export async function createJobset(db: Pick<pg.Pool, 'query'>, project = 'demo', jobset = 'main', shares = 100): Promise<number> {
  await db.query("insert into users (username, emailaddress, password) values ('hydrant', 'hydrant@localhost', '!') on conflict do nothing");
  await db.query('insert into projects (name, displayname, owner) values ($1, $1, $2) on conflict do nothing', [project, 'hydrant']);
  const { rows } = await db.query<{ id: number }>(
    `insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath, schedulingshares)
     values ($1, $2, '', 'src', 'release.nix', $3) returning id`,
    [jobset, project, shares],
  );
  return rows[0]!.id;
}

/**
 * A jobset (as createJobset makes it) in `db`, made before the tests of the
 * enclosing describe block; call it after useTestDatabase. `id` is its id
 * once made.
 */
export function useJobset(db: Pick<pg.Pool, 'query'> | { readonly pool: Pick<pg.Pool, 'query'> }, project?: string, jobset?: string): { readonly id: number } {
  let id: number | undefined;
  beforeAll(async () => {
    id = await createJobset('pool' in db ? db.pool : db, project, jobset);
  });
  return {
    get id(): number {
      if (id === undefined) throw new Error('the jobset is only there in the hooks and tests of its describe block');
      return id;
    },
  };
}

/** Queues a build row the way Hydra's evaluator does (finished = 0). */
export async function queueBuild(
  db: Pick<pg.Pool, 'query'>,
  jobsetId: number,
  drvPath: string,
  job = 'job',
  system = 'x86_64-linux',
  outputs: readonly { name: string; path: string | null }[] = [],
): Promise<number> {
  const { rows } = await db.query<{ id: number }>(
    `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
     values (0, extract(epoch from now())::int, $1, $2, $3, $4) returning id`,
    [jobsetId, job, drvPath, system],
  );
  const id = rows[0]!.id;
  for (const o of outputs) await db.query('insert into buildoutputs (build, name, path) values ($1, $2, $3)', [id, o.name, o.path]);
  return id;
}
