import { ensureSchema } from '../../db/schema.ts';
import { submitJobs, type SubmitJob } from '../../db/submit.ts';
import { evaluateJobs, type EvaluatedJob } from '../../eval/evaluate.ts';
import { ConfigError } from '../../errors/index.ts';
import { LocalNixStore } from '../../nix/local-store.ts';
import { storePathName } from '../../nix/store-path.ts';
import { writeReport } from './submit-report.ts';
import { databaseLine, NAMED_DB_OPTIONS, NAMED_DB_OPTIONS_HELP, namedDatabaseConfig, openCommandDatabase, type Command } from '../command.ts';

export const submit: Command = {
  name: 'submit',
  summary: 'queue builds: evaluate a Nix file, or take .drv paths',
  usage: 'hydrant submit --project P --jobset J [--create] (--file FILE [--attr A]... | DRV...)',
  help: `Queues builds in a project/jobset as Hydra's evaluator does: Builds and
BuildOutputs rows, an evaluation (JobsetEvals) with its members, and a
NOTIFY builds_added for the runner. A job whose derivation is already queued
or built in the jobset is not queued again. The report (one line per queued
build, after a first line naming the database) is printed after the commit;
if stdout is closed early (\`| head\`) the rest is dropped quietly and the
exit code stays 0.

A jobset made by --create is one Hydra's evaluator leaves alone: disabled
(enabled = 0), checkinterval 0, no inputs; its builds are still queued and
built (docs/OPERATIONS.md).

      --project P      project name
      --jobset J       jobset name
      --create         create the project and jobset if they do not exist
      --file FILE      a Nix file: every top-level derivation attribute (a
                       function is called with {}) becomes a job, with Hydra's
                       meta attributes (schedulingPriority, timeout, maxSilent, ...)
      --attr A         only these attributes of --file (repeatable)
      DRV...           .drv paths to queue instead; the job name is the
                       derivation's name
${NAMED_DB_OPTIONS_HELP}`,
  options: {
    ...NAMED_DB_OPTIONS,
    project: { type: 'string' },
    jobset: { type: 'string' },
    create: { type: 'boolean' },
    file: { type: 'string' },
    attr: { type: 'string', multiple: true },
  },
  async run({ values, positionals }) {
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
  },
};

async function fromDrv(store: LocalNixStore, drvPath: string): Promise<EvaluatedJob> {
  const d = await store.readDerivation(drvPath);
  const name = storePathName(drvPath).replace(/\.drv$/, '');
  return {
    job: name, drvPath, nixName: name, system: d.system, description: null, license: null, homepage: null,
    maintainers: null, priority: 100, timeout: 36000, maxSilent: 7200, isChannel: false,
  };
}
