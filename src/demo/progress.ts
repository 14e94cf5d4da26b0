import { EXPECTED_STATUS, statusName } from './expected.ts';
import type { DemoBuild } from './reads.ts';

/** `12.3s`, `2m05s`. */
export function formatElapsed(ms: number): string {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.floor(s - m * 60)).padStart(2, '0')}s`;
}

/** How a finished build ended, e.g. `succeeded (built on demo-builder-1)`. */
export function describeBuild(b: DemoBuild): string {
  let text = statusName(b.status);
  if (b.status === 0) {
    if (b.machine) text += ` (built on ${b.machine})`;
    else if (b.cached) text += ' (cached)';
  } else if (b.machine) {
    text += ` (on ${b.machine})`;
  } else if (b.cached) {
    text += ' (cached failure)';
  }
  const want = EXPECTED_STATUS[b.job];
  if (want !== undefined && b.status !== want) text += `, expected ${statusName(want)}`;
  return text;
}

/**
 * Progress while the demo's builds run: one line per build as it ends
 * (`[3/12] libnet: succeeded (built on demo-builder-1)`), and on a terminal
 * a progress bar below them, redrawn in place.
 */
export class ProgressView {
  private readonly printed = new Set<number>();
  private barShown = false;

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly tty: boolean,
    private readonly total: number,
    private readonly startedAt: number,
  ) {}

  get ended(): number {
    return this.printed.size;
  }

  update(builds: readonly DemoBuild[], busy: number, now = Date.now()): void {
    for (const b of builds) {
      if (!b.finished || this.printed.has(b.id)) continue;
      this.printed.add(b.id);
      this.line(`[${this.printed.size}/${this.total}] ${b.job}: ${describeBuild(b)}`);
    }
    if (this.tty) this.drawBar(busy, now);
  }

  /** A line of text above the bar. */
  line(text: string): void {
    this.clearBar();
    this.out.write(`${text}\n`);
  }

  /** Removes the bar (before the summary, or on exit). */
  clearBar(): void {
    if (this.barShown) this.out.write('\r\x1b[K');
    this.barShown = false;
  }

  private drawBar(busy: number, now: number): void {
    const width = 30;
    const done = this.printed.size;
    const filled = this.total === 0 ? width : Math.round((done / this.total) * width);
    const bar = `${'#'.repeat(filled)}${'-'.repeat(width - filled)}`;
    this.out.write(`\r\x1b[K[${bar}] ${done}/${this.total} builds ended, ${busy} building, ${formatElapsed(now - this.startedAt)}`);
    this.barShown = true;
  }
}
