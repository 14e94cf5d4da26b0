import { ensureSchema } from '../../db/schema.ts';
import { submitJobs, type SubmitJob } from '../../db/submit.ts';
import { evaluateJobs, type EvaluatedJob } from '../../eval/evaluate.ts';
import { ConfigError } from '../../errors/index.ts';
import { LocalNixStore } from '../../nix/local-store.ts';
import { storePathName } from '../../nix/store-path.ts';
import { writeReport } from './submit-report.ts';
import type { CommandArgs } from '../command.ts';
import { databaseLine, namedDatabaseConfig, openCommandDatabase } from '../database.ts';

export async function run({ values, positionals }: CommandArgs): Promise<number> {
  const project = values.project as string | undefined;
  const jobset = values.jobset as string | undefined;
  const file = values.file as string | undefined;
  if (!project || !jobset) throw new ConfigError('hydrant submit needs --project and --jobset');
  if (!file && positionals.length === 0) throw new ConfigError('hydrant submit needs --file FILE or .drv paths');
  // Checked before evaluating, so a wrong flag costs no evaluation.
  const config = namedDatabaseConfig('submit', values);
  const store = new LocalNixStore();
  const t0 = Date.now();
  const evaluated: EvaluatedJob[] = file
    ? await evaluateJobs(file, (values.attr as string[] | undefined) ?? [])
    : await Promise.all(positionals.map(async (drvPath) => fromDrv(store, drvPath)));
  const jobs: SubmitJob[] = await Promise.all(evaluated.map(async (j) => ({ ...j, outputs: (await store.readDerivation(j.drvPath)).outputs })));
  const db = await openCommandDatabase(config);
  try {
    await ensureSchema(db.pool);
    const r = await submitJobs(db.pool, {
      project,
      jobset,
      create: values.create === true,
      jobs,
      now: Math.floor(Date.now() / 1000),
      evalSeconds: Math.round((Date.now() - t0) / 1000),
      source: file ?? 'drv paths',
    });
    const lines = [databaseLine(db, config).trimEnd(), `evaluation ${r.evalId} of ${project}:${jobset}: ${r.added.length} queued, ${r.existing.length} already there`];
    for (const b of r.added) lines.push(`  queued build ${b.id} ${b.job}`);
    await writeReport(process.stdout, `${lines.join('\n')}\n`);
    return 0;
  } finally {
    await db.close();
  }
}

async function fromDrv(store: LocalNixStore, drvPath: string): Promise<EvaluatedJob> {
  const d = await store.readDerivation(drvPath);
  const name = storePathName(drvPath).replace(/\.drv$/, '');
  return {
    job: name, drvPath, nixName: name, system: d.system, description: null, license: null, homepage: null,
    maintainers: null, priority: 100, timeout: 36000, maxSilent: 7200, isChannel: false,
  };
}
