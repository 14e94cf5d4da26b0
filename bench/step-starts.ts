/**
 * The runner's database work per step start: the start written as one
 * statement (steps-started.sql, what PgSchedulerDb.stepsStarted does) against
 * the transaction it replaces (begin, lock the build, insert the step, NOTIFY,
 * commit), one start per write as most dispatch rounds have. Interleaved
 * rounds on one connection to an embedded PostgreSQL; per start: statements,
 * socket writes, Node CPU, the backend's CPU and wall time (medians).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { startedInOneStatement, startedInTransaction } from '../src/db/scheduler-db.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { benchOptions, log, round } from './common.ts';

export const describe = 'PostgreSQL work per step start: one statement (steps-started.sql) against the transaction it replaced';

const MODES = { statement: startedInOneStatement, transaction: startedInTransaction } as const;
type Mode = keyof typeof MODES;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** utime + stime of a process, in ms (clock ticks of 10 ms). */
function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, {
    /** Rounds per mode, alternating. */
    rounds: 10,
    /** Starts per round, one per write and per build. */
    starts: 300,
  });
  const { rounds, starts } = values;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-step-starts-'));
  const db = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  // One connection: its backend's CPU is the statements' CPU.
  const pool = createPool(db.url, { max: 1 });
  try {
    await ensureSchema(pool);
    await pool.query("insert into users (username, emailaddress, password) values ('bench', 'b@x', '!')");
    await pool.query("insert into projects (name, displayname, owner) values ('bench', 'bench', 'bench')");
    const js = await pool.query<{ id: number }>("insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath) values ('main', 'bench', '', 'src', 'release.nix') returning id");
    const total = rounds * 2 * starts;
    const ids = (
      await pool.query<{ id: number }>(
        `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
         select 0, 0, $1, 'job' || i, '/nix/store/' || lpad(i::text, 32, '0') || '-x.drv', 'x86_64-linux' from generate_series(1, $2::integer) as i returning id`,
        [js.rows[0]!.id, total],
      )
    ).rows.map((r) => r.id);
    log(`queued ${total} builds`);

    // Statements and socket writes of the one connection, counted.
    let statements = 0;
    let writes = 0;
    const client = (await pool.connect()) as pg.PoolClient & { connection: { stream: { _write: Function; _writev?: Function } } };
    const query = client.query.bind(client) as (...a: unknown[]) => unknown;
    (client as unknown as { query: unknown }).query = (...a: unknown[]) => {
      statements++;
      return query(...a);
    };
    const stream = client.connection.stream;
    for (const k of ['_write', '_writev'] as const) {
      const f = stream[k];
      if (f) stream[k] = function (this: unknown, ...a: unknown[]) {
        writes++;
        return f.apply(this, a);
      };
    }
    const backend = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    client.release();

    const per: Record<Mode, { statements: number[]; writes: number[]; nodeCpuUs: number[]; backendCpuUs: number[]; wallUs: number[] }> = {
      statement: { statements: [], writes: [], nodeCpuUs: [], backendCpuUs: [], wallUs: [] },
      transaction: { statements: [], writes: [], nodeCpuUs: [], backendCpuUs: [], wallUs: [] },
    };
    let next = 0;
    // Warm up both (prepared statements, plans) on builds of their own.
    for (const mode of Object.keys(MODES) as Mode[]) for (let i = 0; i < 20; i++) await MODES[mode](pool, [start(ids[next++ % ids.length]!)]);
    for (let r = 0; r < rounds; r++) {
      for (const mode of (r % 2 ? ['transaction', 'statement'] : ['statement', 'transaction']) as Mode[]) {
        const s0 = statements, w0 = writes, c0 = process.cpuUsage(), b0 = procCpuMs(backend), t0 = performance.now();
        for (let i = 0; i < starts; i++) await MODES[mode](pool, [start(ids[next++ % ids.length]!)]);
        const c = process.cpuUsage(c0);
        const p = per[mode];
        p.wallUs.push(((performance.now() - t0) * 1000) / starts);
        p.nodeCpuUs.push((c.user + c.system) / starts);
        p.backendCpuUs.push(((procCpuMs(backend) - b0) * 1000) / starts);
        p.statements.push((statements - s0) / starts);
        p.writes.push((writes - w0) / starts);
      }
      log(`round ${r + 1}/${rounds}`);
    }
    const summary = Object.fromEntries(
      (Object.keys(per) as Mode[]).map((m) => [m, Object.fromEntries(Object.entries(per[m]).map(([k, xs]) => [k, round(median(xs), 1)]))]),
    );
    return { rounds, starts, perStart: summary };
  } finally {
    await pool.end();
    await db.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function start(buildId: number) {
  return { buildId, drvPath: `/nix/store/${String(buildId).padStart(32, '0')}-x.drv`, system: 'x86_64-linux', machine: 'ssh://b', startTime: 1, outputs: [{ name: 'out', path: null }], firstStepOfBuild: true };
}
