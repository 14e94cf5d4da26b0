import { spawn } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, rm, writeFile, rename, open } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LocalBackendConfig } from '../config/provisioner-config.ts';
import { ProvisionBackendError } from '../errors/index.ts';
import { dieWithParent } from '../util/die-with-parent.ts';
import { hydrantArgv } from '../util/hydrant-bin.ts';
import type { BackendMachine, MachineDescription, ProvisionBackend } from './backend.ts';
import { alive, pidsWithArg } from './process-list.ts';

const STOP_WAIT_MS = 60_000;

/**
 * `hydrant builder` agents on this host, each with a private store
 * (docs/PROVISIONER.md). A machine is its files under `dir`: `<id>.json`
 * (its description, written first), `<id>.toml` (the builder's
 * configuration) and `<id>/` (its store); it runs while a process has
 * `<id>.toml` in its arguments. The builders are detached: they outlive a
 * provisioner that is killed, and the next one finds them in /proc.
 */
export class LocalBackend implements ProvisionBackend {
  constructor(
    private readonly config: LocalBackendConfig,
    private readonly dir: string,
    /** The builders get SIGTERM when this process dies (the demo's own builders); off for `hydrant provision`, whose machines outlive it. */
    private readonly dieWithParent = false,
  ) {}

  #toml(id: string): string {
    return join(this.dir, `${id}.toml`);
  }

  async create(d: MachineDescription): Promise<BackendMachine> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeAtomic(join(this.dir, `${d.id}.json`), `${JSON.stringify(d)}\n`);
    const toml = [
      `server = ${JSON.stringify(this.config.server)}`,
      `tokenFile = ${JSON.stringify(this.config.tokenFile)}`,
      ...(this.config.tlsCaFile ? [`tlsCaFile = ${JSON.stringify(this.config.tlsCaFile)}`] : []),
      `machineId = ${JSON.stringify(d.id)}`,
      ...(this.config.privateStores ? [`storeDir = ${JSON.stringify(join(this.dir, d.id))}`] : []),
      `maxJobs = ${d.maxJobs}`,
      `speedFactor = ${d.speedFactor}`,
      `systems = ${JSON.stringify([d.system])}`,
      ...(d.features.length > 0 ? [`supportedFeatures = ${JSON.stringify(d.features)}`, `mandatoryFeatures = ${JSON.stringify(d.features)}`] : []),
      '',
    ].join('\n');
    await writeAtomic(this.#toml(d.id), toml);
    await this.start(d);
    return { id: d.id, state: 'running', type: d.type };
  }

  async start(d: MachineDescription): Promise<void> {
    const toml = this.#toml(d.id);
    if (pidsWithArg(toml).some(alive)) return; // already running (a create asked again after a crash)
    const log = await open(join(this.dir, `${d.id}.log`), 'a', 0o600);
    try {
      const argv = hydrantArgv(['builder', '--config', toml]);
      const [cmd, args] = this.dieWithParent ? dieWithParent('TERM', process.execPath, argv) : [process.execPath, argv];
      const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log.fd, log.fd] });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', (err) => reject(new ProvisionBackendError('start', d.id, err.message, { cause: err })));
      });
      child.unref();
    } finally {
      await log.close();
    }
  }

  async stop(d: MachineDescription): Promise<void> {
    const pids = pidsWithArg(this.#toml(d.id)).filter(alive);
    // SIGTERM: the builder finishes its running jobs, then exits.
    for (const pid of pids) signal(pid, 'SIGTERM');
    const until = Date.now() + STOP_WAIT_MS;
    while (pids.some(alive) && Date.now() < until) await sleep(100);
    for (const pid of pids.filter(alive)) signal(pid, 'SIGKILL');
  }

  async destroy(d: MachineDescription): Promise<void> {
    await this.stop(d);
    const store = join(this.dir, d.id);
    // A Nix store's files are read-only: writable first, or rm cannot remove them.
    await chmodTree(store);
    await rm(store, { recursive: true, force: true });
    for (const f of [`${d.id}.toml`, `${d.id}.log`, `${d.id}.json`]) await rm(join(this.dir, f), { force: true });
  }

  async list(): Promise<BackendMachine[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: BackendMachine[] = [];
    for (const n of names.filter((f) => f.endsWith('.json') && !f.startsWith('.'))) {
      const id = n.slice(0, -5);
      let type: string | undefined;
      try {
        type = (JSON.parse(await readFile(join(this.dir, n), 'utf8')) as MachineDescription).type;
      } catch {
        type = undefined;
      }
      const running = pidsWithArg(this.#toml(id)).some(alive);
      out.push({ id, state: running ? 'running' : 'stopped', ...(type !== undefined && { type }) });
    }
    return out;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

async function chmodTree(path: string): Promise<void> {
  try {
    await chmod(path, 0o700);
  } catch {
    return;
  }
  let entries;
  try {
    entries = await readdir(path, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) await chmodTree(join(path, e.name));
}

/** Write-then-rename, mode 600: a reader (or a provisioner restarted after a kill) sees the old file or the new one, never half. */
export async function writeAtomic(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data, { mode: 0o600 });
  await rename(tmp, path);
}
