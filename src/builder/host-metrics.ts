import { readFile, statfs } from 'node:fs/promises';
import { cpus } from 'node:os';

/**
 * What a builder reports about its host in pings: load, memory, pressure
 * stall information and free disk space, read from /proc and statfs. A file
 * that is missing (no PSI on older kernels, a container without /proc
 * pressure) reports zeros rather than failing the ping.
 */
export interface Pressure {
  avg10: number;
  avg60: number;
  avg300: number;
}

export interface HostMetrics {
  load1: number;
  load5: number;
  load15: number;
  memTotalBytes: number;
  memAvailableBytes: number;
  /** `some` lines of /proc/pressure/{cpu,memory,io}: share of time some task stalled, in %. */
  cpuPressure: Pressure;
  memPressure: Pressure;
  ioPressure: Pressure;
  /** Every PSI line Hydra's machine status shows; null where the host has no such file or line. */
  psi: PressureState;
  buildDirFreePercent: number;
  storeFreePercent: number;
}

/** Hydra's pressure set (the Rust builder's PressureState): `some` and `full` lines of /proc/pressure/*. */
export interface PressureState {
  cpuSome: Pressure | null;
  memSome: Pressure | null;
  memFull: Pressure | null;
  ioSome: Pressure | null;
  ioFull: Pressure | null;
  irqFull: Pressure | null;
}

export interface HostFacts {
  cpuCount: number;
  bogomips: number;
  memTotalBytes: number;
}

const NO_PRESSURE: Pressure = Object.freeze({ avg10: 0, avg60: 0, avg300: 0 });

export function parseLoadavg(text: string): [number, number, number] {
  const [a, b, c] = text.trim().split(/\s+/).map(Number);
  return [a ?? 0, b ?? 0, c ?? 0];
}

export function parseMeminfo(text: string): { total: number; available: number } {
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { total: kb('MemTotal'), available: kb('MemAvailable') };
}

export function parsePressure(text: string): Pressure {
  return pressureLine(text, 'some') ?? NO_PRESSURE;
}

/** One line (`some` or `full`) of a /proc/pressure file; null when the file has no such line. */
export function pressureLine(text: string, kind: 'some' | 'full'): Pressure | null {
  const line = text.split('\n').find((l) => l.startsWith(`${kind} `));
  if (!line) return null;
  const get = (k: string) => Number(new RegExp(`${k}=([0-9.]+)`).exec(line)?.[1] ?? 0);
  return { avg10: get('avg10'), avg60: get('avg60'), avg300: get('avg300') };
}

export function parseBogomips(cpuinfo: string): number {
  const m = /^bogomips\s*:\s*([0-9.]+)/im.exec(cpuinfo);
  return m ? Number(m[1]) : 0;
}

async function readOr(path: string, fallback: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return fallback;
  }
}

/** Free space of the filesystem holding `path`, in % of its size (100 when it cannot be read). */
export async function freePercent(path: string): Promise<number> {
  try {
    const s = await statfs(path);
    return s.blocks > 0 ? (s.bavail / s.blocks) * 100 : 100;
  } catch {
    return 100;
  }
}

export async function hostFacts(): Promise<HostFacts> {
  const mem = parseMeminfo(await readOr('/proc/meminfo', ''));
  return { cpuCount: cpus().length, bogomips: parseBogomips(await readOr('/proc/cpuinfo', '')), memTotalBytes: mem.total };
}

export async function hostMetrics(dirs: { buildDir: string; storeDir: string }): Promise<HostMetrics> {
  const [loadavg, meminfo, cpu, memory, io, irq, buildDirFreePercent, storeFreePercent] = await Promise.all([
    readOr('/proc/loadavg', '0 0 0'),
    readOr('/proc/meminfo', ''),
    readOr('/proc/pressure/cpu', ''),
    readOr('/proc/pressure/memory', ''),
    readOr('/proc/pressure/io', ''),
    // Only kernels built with CONFIG_IRQ_TIME_ACCOUNTING have it (6.1+).
    readOr('/proc/pressure/irq', ''),
    freePercent(dirs.buildDir),
    freePercent(dirs.storeDir),
  ]);
  const [load1, load5, load15] = parseLoadavg(loadavg);
  const mem = parseMeminfo(meminfo);
  return {
    load1, load5, load15,
    memTotalBytes: mem.total,
    memAvailableBytes: mem.available,
    cpuPressure: parsePressure(cpu),
    memPressure: parsePressure(memory),
    ioPressure: parsePressure(io),
    psi: {
      cpuSome: pressureLine(cpu, 'some'),
      memSome: pressureLine(memory, 'some'),
      memFull: pressureLine(memory, 'full'),
      ioSome: pressureLine(io, 'some'),
      ioFull: pressureLine(io, 'full'),
      irqFull: pressureLine(irq, 'full'),
    },
    buildDirFreePercent,
    storeFreePercent,
  };
}
