/**
 * Hydra's machines file (docs/SSH-MACHINES.md): one build machine a line,
 * whitespace-separated columns, `#` to the end of the line a comment:
 *
 *   1 ssh name (`user@host`, an ssh_config alias, `localhost`, or the
 *     extension `ssh://user@host:port`)   2 systems, comma-separated
 *   3 ssh private key file or `-`         4 max jobs (default 1)
 *   5 speed factor (default 1)            6 supported features or `-`
 *   7 mandatory features or `-`           8 base64 of the host's public key or `-`
 *
 * A line that cannot be used is reported (file and line) and skipped; the
 * others load. Several files (NIX_REMOTE_SYSTEMS is `:`-separated) make one
 * set, keyed by column 1 as Hydra keys it; a later line for the same name
 * replaces the earlier one (reported too).
 */
import { existsSync, statSync, readFileSync } from 'node:fs';
import { MachinesFileError } from '../errors/index.ts';

export interface MachineSpec {
  /** Column 1 verbatim: the machine's identity, as Hydra keys it. */
  readonly name: string;
  /** What ssh is given: `user@host` or `host` (no scheme, no port). */
  readonly destination: string;
  /** The host alone (for the known_hosts line). */
  readonly host: string;
  /** From `ssh://…:port`; null for ssh's default (or ssh_config's). */
  readonly port: number | null;
  /** `localhost`: a local `nix-store --serve`, no ssh. */
  readonly isLocalhost: boolean;
  readonly systems: readonly string[];
  readonly sshKey: string | null;
  readonly maxJobs: number;
  readonly speedFactor: number;
  /** Supported features, mandatory ones included (as Hydra adds them). */
  readonly supportedFeatures: readonly string[];
  readonly mandatoryFeatures: readonly string[];
  /** The host's public key line (`<type> <base64>`), decoded from column 8; null for `-`. */
  readonly publicHostKey: string | null;
  readonly file: string;
  readonly line: number;
}

export interface MachinesParse {
  readonly machines: ReadonlyMap<string, MachineSpec>;
  readonly errors: readonly MachinesFileError[];
}

const unset = (t: string | undefined): boolean => t === undefined || t === '' || t === '-';
const list = (t: string | undefined): string[] => (unset(t) ? [] : t!.split(',').filter(Boolean));

// ssh takes its destination as an argument: a leading `-` would be an option (`-oProxyCommand=…`).
const DESTINATION = /^(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9._:[\]%-]+$/;
const FEATURE = /^[A-Za-z0-9_.+:-]+$/;
const SYSTEM = /^[A-Za-z0-9_.-]+$/;
// One known_hosts key: a type and base64, an optional comment; never a second line or a marker.
const HOST_KEY = /^([a-z0-9@.-]+) ([A-Za-z0-9+/]+={0,3})(?: [^\r\n]*)?$/;

function parseName(col: string): { destination: string; host: string; port: number | null } | string {
  let destination = col;
  let port: number | null = null;
  if (col.includes('://')) {
    let url: URL;
    try {
      url = new URL(col);
    } catch {
      return `not a URL: ${JSON.stringify(col)}`;
    }
    if (url.protocol !== 'ssh:') return `only ssh:// URLs are supported (${url.protocol}// given)`;
    if (url.pathname !== '' || url.search !== '' || url.hash !== '' || url.password !== '') return `an ssh:// URL here is ssh://[user@]host[:port], nothing more: ${JSON.stringify(col)}`;
    const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1'); // ssh takes an IPv6 address bare
    destination = url.username ? `${decodeURIComponent(url.username)}@${hostname}` : hostname;
    port = url.port ? Number(url.port) : null;
  }
  if (destination.startsWith('-') || !DESTINATION.test(destination)) return `not an ssh destination: ${JSON.stringify(col)}`;
  const at = destination.lastIndexOf('@');
  const host = at >= 0 ? destination.slice(at + 1) : destination;
  if (host === '' || host.startsWith('-')) return `not an ssh destination: ${JSON.stringify(col)}`;
  return { destination, host, port };
}

/** Parses one line's tokens; a string is the reason it is refused. */
function parseLine(tokens: readonly string[], file: string, line: number): MachineSpec | string {
  if (tokens.length < 3) return `a machine needs at least 3 columns (name, systems, ssh key), found ${tokens.length}`;
  if (tokens.length > 8) return `a machine has at most 8 columns, found ${tokens.length}`;
  if (tokens[0]!.startsWith('@')) return 'includes (@file) are not supported; list the file in machinesFiles';
  const name = parseName(tokens[0]!);
  if (typeof name === 'string') return name;
  const systems = list(tokens[1]);
  if (systems.length === 0) return 'no system types in column 2';
  const badSystem = systems.find((s) => !SYSTEM.test(s));
  if (badSystem !== undefined) return `not a system type: ${JSON.stringify(badSystem)}`;
  let maxJobs = 1;
  if (!unset(tokens[3])) {
    if (!/^[0-9]{1,6}$/.test(tokens[3]!)) return `max jobs (column 4) is not a whole number: ${JSON.stringify(tokens[3])}`;
    maxJobs = Number(tokens[3]);
  }
  let speedFactor = 1;
  if (!unset(tokens[4])) {
    speedFactor = Number(tokens[4]);
    if (!/^[0-9]+(\.[0-9]+)?$/.test(tokens[4]!) || !(speedFactor > 0) || !Number.isFinite(speedFactor)) {
      return `speed factor (column 5) is not a positive number: ${JSON.stringify(tokens[4])}`;
    }
  }
  const mandatoryFeatures = list(tokens[6]);
  const supportedFeatures = [...new Set([...list(tokens[5]), ...mandatoryFeatures])];
  const badFeature = supportedFeatures.find((f) => !FEATURE.test(f));
  if (badFeature !== undefined) return `not a feature name: ${JSON.stringify(badFeature)}`;
  let publicHostKey: string | null = null;
  if (!unset(tokens[7])) {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(tokens[7]!)) return 'the host key (column 8) is not base64';
    const decoded = Buffer.from(tokens[7]!, 'base64').toString('utf8').trim();
    const m = HOST_KEY.exec(decoded);
    if (!m) return 'the host key (column 8) does not decode to one public key line (`<type> <base64>`)';
    publicHostKey = `${m[1]} ${m[2]}`;
  }
  return {
    name: tokens[0]!,
    ...name,
    isLocalhost: tokens[0] === 'localhost',
    systems,
    sshKey: unset(tokens[2]) ? null : tokens[2]!,
    maxJobs,
    speedFactor,
    supportedFeatures,
    mandatoryFeatures,
    publicHostKey,
    file,
    line,
  };
}

/** Parses one file's text (`file` names it in errors). */
export function parseMachines(text: string, file: string): MachinesParse {
  const machines = new Map<string, MachineSpec>();
  const errors: MachinesFileError[] = [];
  text.split('\n').forEach((raw, i) => {
    const tokens = raw.replace(/#.*/, '').split(/[ \t\r\v\f]+/).filter(Boolean);
    if (tokens.length === 0) return;
    const spec = parseLine(tokens, file, i + 1);
    if (typeof spec === 'string') errors.push(new MachinesFileError(file, i + 1, spec));
    else add(machines, errors, spec);
  });
  return { machines, errors };
}

function add(machines: Map<string, MachineSpec>, errors: MachinesFileError[], spec: MachineSpec): void {
  const before = machines.get(spec.name);
  if (before) errors.push(new MachinesFileError(spec.file, spec.line, `${spec.name} is also at ${before.file}:${before.line}; this line replaces it`));
  machines.set(spec.name, spec);
}

/** Reads and merges the files, in order; a missing file is empty (as when its provisioner has written nothing yet). */
export function loadMachinesFiles(files: readonly string[]): MachinesParse {
  const machines = new Map<string, MachineSpec>();
  const errors: MachinesFileError[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') errors.push(new MachinesFileError(file, 0, `cannot read: ${(e as Error).message}`));
      continue;
    }
    const one = parseMachines(text, file);
    errors.push(...one.errors);
    for (const spec of one.machines.values()) add(machines, errors, spec);
  }
  return { machines, errors };
}

/** Hydra's default: `$NIX_REMOTE_SYSTEMS` (`:`-separated), else /etc/nix/machines when it exists, else none. */
export function defaultMachinesFiles(env: NodeJS.ProcessEnv = process.env, etcMachines = '/etc/nix/machines'): string[] {
  if (env.NIX_REMOTE_SYSTEMS) return env.NIX_REMOTE_SYSTEMS.split(':').filter(Boolean);
  return existsSync(etcMachines) ? [etcMachines] : [];
}

function sameSpec(a: MachineSpec, b: MachineSpec): boolean {
  const strip = ({ file: _f, line: _l, ...rest }: MachineSpec) => rest;
  return JSON.stringify(strip(a)) === JSON.stringify(strip(b));
}

export interface MachinesChange {
  readonly added: readonly MachineSpec[];
  readonly removed: readonly MachineSpec[];
  /** The new specs of machines whose columns changed. */
  readonly changed: readonly MachineSpec[];
  readonly errors: readonly MachinesFileError[];
}

/**
 * Re-reads the machines files when one changes (inode, size or mtime, as
 * Hydra stats them) and reports the difference. `check()` looks at once;
 * `start(intervalMs)` looks periodically (Hydra: every 30 s).
 */
export class MachinesFileWatcher {
  #current: ReadonlyMap<string, MachineSpec> = new Map();
  #stamps = '';
  #timer: NodeJS.Timeout | null = null;

  constructor(
    readonly files: readonly string[],
    private readonly onChange: (change: MachinesChange) => void,
  ) {}

  get machines(): ReadonlyMap<string, MachineSpec> {
    return this.#current;
  }

  #stamp(): string {
    return this.files
      .map((f) => {
        try {
          const s = statSync(f);
          return `${s.ino}:${s.size}:${s.mtimeMs}`;
        } catch {
          return 'absent';
        }
      })
      .join('|');
  }

  /**
   * Re-reads the files if any changed since the last look; returns whether
   * they had. `force` (SIGHUP) re-reads them whatever their stamps say (an
   * edit within the same mtime tick keeps inode, size and mtime).
   */
  check(force = false): boolean {
    const stamp = this.#stamp();
    if (stamp === this.#stamps && !force) return false;
    this.#stamps = stamp;
    const { machines, errors } = loadMachinesFiles(this.files);
    const before = this.#current;
    const added = [...machines.values()].filter((m) => !before.has(m.name));
    const removed = [...before.values()].filter((m) => !machines.has(m.name));
    const changed = [...machines.values()].filter((m) => before.has(m.name) && !sameSpec(before.get(m.name)!, m));
    this.#current = machines;
    this.onChange({ added, removed, changed, errors });
    return true;
  }

  start(intervalMs = 30_000): void {
    this.check();
    this.#timer ??= setInterval(() => this.check(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
