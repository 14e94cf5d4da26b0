import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compareOutcome, statusName } from './expected.ts';
import { formatElapsed } from './progress.ts';
import type { BuildProducts, DemoBuild, MachineSteps } from './reads.ts';
import type { DemoPaths } from './state-dir.ts';

export interface SummaryInput {
  builds: readonly DemoBuild[];
  machines: readonly MachineSteps[];
  elapsedMs: number;
  paths: DemoPaths;
  keyName: string;
  /** The release job's build, with its products. */
  release: { build: DemoBuild; products: BuildProducts } | null;
  httpPort: number | undefined;
  /** NAR compression of the cache. */
  compression: string;
}

/** Number of `<hash>.narinfo` files in a directory cache (0 when it does not exist). */
export function countNarinfos(cacheDir: string): number {
  try {
    return readdirSync(cacheDir).filter((f) => f.endsWith('.narinfo')).length;
  } catch {
    return 0;
  }
}

/** The summary printed when every build has ended; `differences` empty means the expected outcome. */
export function renderSummary(s: SummaryInput): { text: string; differences: string[] } {
  const lines: string[] = [];
  const ended = s.builds.filter((b) => b.finished);
  lines.push('', `Summary: ${ended.length} of ${s.builds.length} builds ended in ${formatElapsed(s.elapsedMs)}`);

  const byStatus = new Map<string, number>();
  for (const b of ended) byStatus.set(statusName(b.status), (byStatus.get(statusName(b.status)) ?? 0) + 1);
  // isCachedBuild is also set on builds whose step ran under another build; count only those built by no one here.
  const cached = ended.filter((b) => b.cached && !b.machine).length;
  lines.push('  builds by status:');
  for (const [name, n] of [...byStatus].sort((a, b) => b[1] - a[1])) lines.push(`    ${name.padEnd(20)} ${String(n).padStart(3)}`);
  if (cached > 0) lines.push(`    ${'(cached, not built)'.padEnd(20)} ${String(cached).padStart(3)}`);

  lines.push('  steps built per machine:');
  if (s.machines.length === 0) lines.push('    none (every output already existed)');
  for (const m of s.machines) {
    const parts = [`${m.succeeded} succeeded`, ...(m.failed > 0 ? [`${m.failed} failed`] : []), ...(m.aborted > 0 ? [`${m.aborted} aborted`] : [])];
    lines.push(`    ${m.machine.padEnd(20)} ${String(m.succeeded + m.failed).padStart(3)}  (${parts.join(', ')})`);
  }

  const differences = compareOutcome(s.builds);
  if (differences.length === 0) lines.push('  outcome: as expected');
  else {
    lines.push('  outcome: NOT as expected');
    for (const d of differences) lines.push(`    ${d}`);
  }

  if (s.release) {
    const { build, products } = s.release;
    lines.push(`  release ${build.releaseName ?? '(no release name)'} (job ${build.job}):`);
    for (const p of products.products) lines.push(`    ${p.type} ${p.subtype} ${p.path}`);
    if (products.products.length === 0) lines.push('    (no build products recorded)');
  }

  const narinfos = countNarinfos(s.paths.cacheDir);
  const pub = join(s.paths.keysDir, `${s.keyName}.pub`);
  lines.push(
    '',
    `Binary cache: ${s.paths.cacheDir} (${narinfos} store path${narinfos === 1 ? '' : 's'}, ${s.compression}, signed by ${s.keyName})`,
    `Keys:         ${pub} (public), ${join(s.paths.keysDir, `${s.keyName}.sec`)} (secret)`,
  );
  const example = s.release?.products.out ?? '/nix/store/<path>';
  lines.push(
    'Copy a path from the cache into a Nix store (here, or wherever the cache is copied to):',
    `  nix --extra-experimental-features nix-command copy --from file://${s.paths.cacheDir} --option trusted-public-keys "$(cat ${pub})" ${example}`,
    `State:        ${s.paths.root} (embedded PostgreSQL in postgres/, build logs in hydra/build-logs/, runner log ${s.paths.logFile})`,
  );
  if (s.httpPort !== undefined) lines.push(`Visualizer:   http://127.0.0.1:${s.httpPort}/ (status API under /status)`);
  return { text: `${lines.join('\n')}\n`, differences };
}
