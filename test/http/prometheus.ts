import { spawn } from 'node:child_process';

/** Prometheus text exposition → sample key (`name{labels}`) → value, and family name → type. */
export function parseMetrics(text: string): { samples: Map<string, number>; types: Map<string, string> } {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
    } else if (line && !line.startsWith('#')) {
      const i = line.lastIndexOf(' ');
      samples.set(line.slice(0, i), Number(line.slice(i + 1)));
    }
  }
  return { samples, types };
}

/** The family a sample belongs to (histogram and summary parts fold into their family). */
export function familyOf(sampleKey: string, types: ReadonlyMap<string, string>): string {
  const name = sampleKey.replace(/\{.*$/, '');
  if (types.has(name)) return name;
  return name.replace(/_(bucket|sum|count|total|created)$/, '');
}

/** Families with a sample that differs between any two scrapes (or appears in a later one). */
export function movedFamilies(scrapes: ReturnType<typeof parseMetrics>[]): Set<string> {
  const moved = new Set<string>();
  const types = scrapes[scrapes.length - 1]!.types;
  const keys = new Set(scrapes.flatMap((s) => [...s.samples.keys()]));
  for (const k of keys) {
    const values = scrapes.map((s) => s.samples.get(k));
    if (values.some((v) => v !== values[0])) moved.add(familyOf(k, types));
  }
  return moved;
}

/**
 * Runs the real `promtool check metrics` on an exposition text: its report
 * (one problem a line; empty when it finds none) and exit code.
 */
export async function promtoolCheck(text: string): Promise<{ code: number | null; report: string }> {
  const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let report = '';
  child.stdout.on('data', (d: Buffer) => (report += d));
  child.stderr.on('data', (d: Buffer) => (report += d));
  const done = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject); // promtool missing: the caller's test fails, it is not skipped
    child.on('close', resolve);
  });
  child.stdin.on('error', () => {}); // it may exit before reading everything; the code says why
  child.stdin.end(text);
  return { code: await done, report: report.trim() };
}
