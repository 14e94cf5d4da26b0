import { readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { freePercent, hostFacts, hostMetrics, parseLoadavg, parseMeminfo, parsePressure, pressureLine } from '../../src/builder/host-metrics.ts';

describe('host metrics from /proc and statfs', () => {
  it('parses the kernel formats', () => {
    expect(parseLoadavg('2.64 3.07 2.88 1/82 22949\n')).toEqual([2.64, 3.07, 2.88]);
    expect(parseMeminfo('MemTotal:       24683656 kB\nMemFree: 1 kB\nMemAvailable:   24107444 kB\n')).toEqual({ total: 24683656 * 1024, available: 24107444 * 1024 });
    expect(parsePressure('some avg10=45.51 avg60=37.94 avg300=41.00 total=1292275373\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n')).toEqual({ avg10: 45.51, avg60: 37.94, avg300: 41 });
    expect(parsePressure('')).toEqual({ avg10: 0, avg60: 0, avg300: 0 });
    // Hydra's machine status shows `full` lines too; a file without the line (cpu before 5.13) has none.
    expect(pressureLine('some avg10=1.00 avg60=2.00 avg300=3.00 total=1\nfull avg10=0.50 avg60=0.25 avg300=0.125 total=9\n', 'full')).toEqual({ avg10: 0.5, avg60: 0.25, avg300: 0.125 });
    expect(pressureLine('some avg10=1.00 avg60=2.00 avg300=3.00 total=1\n', 'full')).toBeNull();
  });

  it('reads this machine: values agree with /proc and df', async () => {
    const m = await hostMetrics({ buildDir: tmpdir(), storeDir: existsSync('/nix/store') ? '/nix/store' : '/' });
    const [l1] = parseLoadavg(readFileSync('/proc/loadavg', 'utf8'));
    expect(Math.abs(m.load1 - l1)).toBeLessThan(5);
    expect(m.memTotalBytes).toBe(parseMeminfo(readFileSync('/proc/meminfo', 'utf8')).total);
    expect(m.memAvailableBytes).toBeGreaterThan(0);
    expect(m.memAvailableBytes).toBeLessThanOrEqual(m.memTotalBytes);
    expect(m.storeFreePercent).toBeGreaterThan(0);
    expect(m.storeFreePercent).toBeLessThanOrEqual(100);
    // Every PSI line the kernel has is reported; the ones it lacks are null, not zeros.
    for (const [key, file, kind] of [['cpuSome', 'cpu', 'some'], ['memFull', 'memory', 'full'], ['ioFull', 'io', 'full'], ['irqFull', 'irq', 'full']] as const) {
      const text = existsSync(`/proc/pressure/${file}`) ? readFileSync(`/proc/pressure/${file}`, 'utf8') : '';
      if (pressureLine(text, kind) === null) expect(m.psi[key], key).toBeNull();
      else expect(m.psi[key], key).toMatchObject({ avg10: expect.any(Number), avg60: expect.any(Number), avg300: expect.any(Number) });
    }
    const facts = await hostFacts();
    expect(facts.cpuCount).toBeGreaterThan(0);
    expect(facts.memTotalBytes).toBe(m.memTotalBytes);
    expect(await freePercent('/nonexistent/path')).toBe(100);
  });
});
