import { spawn } from 'node:child_process';
import type { CommandBackendConfig } from '../config/provisioner-config.ts';
import { ProvisionBackendError } from '../errors/index.ts';
import type { BackendMachine, MachineDescription, ProvisionBackend } from './backend.ts';

/**
 * Machines made by commands (a cloud CLI, Terraform, NixOps): each gets the
 * machine's description as JSON on stdin and answers JSON on stdout
 * (docs/PROVISIONER.md). create answers the machine (`{"id", "state",
 * "sshName"?, "hostKey"?}`), list an array of them; start, stop and destroy
 * answer anything (or nothing). A non-zero exit is a failure, retried.
 */
export class CommandBackend implements ProvisionBackend {
  constructor(
    private readonly config: CommandBackendConfig,
    private readonly tag: string,
  ) {}

  async create(d: MachineDescription): Promise<BackendMachine> {
    const answer = parseMachine(await this.#run('create', this.config.create, d, d.id), d.id);
    if (answer.id !== d.id) throw new ProvisionBackendError('create', d.id, `answered machine ${JSON.stringify(answer.id)}, not ${JSON.stringify(d.id)}`);
    return answer;
  }

  async start(d: MachineDescription): Promise<void> {
    await this.#run('start', this.config.start!, d, d.id);
  }

  async stop(d: MachineDescription): Promise<void> {
    await this.#run('stop', this.config.stop!, d, d.id);
  }

  async destroy(d: MachineDescription): Promise<void> {
    await this.#run('destroy', this.config.destroy, d, d.id);
  }

  async list(): Promise<BackendMachine[]> {
    const out = await this.#run('list', this.config.list, { tag: this.tag }, null);
    let doc: unknown;
    try {
      doc = JSON.parse(out);
    } catch {
      throw new ProvisionBackendError('list', null, `answered no JSON: ${JSON.stringify(out.slice(0, 200))}`);
    }
    if (!Array.isArray(doc)) throw new ProvisionBackendError('list', null, 'answered no JSON array');
    return doc.map((m) => checkMachine(m, 'list', null));
  }

  #run(operation: string, argv: readonly string[], input: unknown, id: string | null): Promise<string> {
    const [cmd, ...args] = argv;
    return new Promise((resolve, reject) => {
      const child = spawn(cmd!, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: this.config.timeoutS * 1000 });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.stdin.on('error', () => {}); // a command that does not read its stdin
      child.on('error', (err) => reject(new ProvisionBackendError(operation, id, `${cmd}: ${err.message}`, { cause: err })));
      child.on('close', (code, sig) => {
        if (code === 0) return resolve(stdout);
        const said = stderr.trim().split('\n').slice(-2).join(' | ');
        reject(new ProvisionBackendError(operation, id, `${cmd} ${sig ? `killed by ${sig}` : `exited ${code}`}${said ? `: ${said}` : ''}`));
      });
      child.stdin.end(`${JSON.stringify(input)}\n`);
    });
  }
}

function parseMachine(out: string, id: string): BackendMachine {
  let doc: unknown;
  try {
    doc = JSON.parse(out);
  } catch {
    throw new ProvisionBackendError('create', id, `answered no JSON: ${JSON.stringify(out.slice(0, 200))}`);
  }
  return checkMachine(doc, 'create', id);
}

const SSH_NAME = /^(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9._:[\]%-]+$/;
const HOST_KEY = /^[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}$/;

/** A machine from a command's answer, or why not: its fields end up in the machines file, so they are checked as the runner would. */
function checkMachine(m: unknown, operation: string, id: string | null): BackendMachine {
  const bad = (why: string): never => {
    throw new ProvisionBackendError(operation, id, `answered an unusable machine (${why}): ${JSON.stringify(m).slice(0, 200)}`);
  };
  if (typeof m !== 'object' || m === null) return bad('not an object');
  const o = m as Record<string, unknown>;
  if (typeof o.id !== 'string' || o.id === '') return bad('no id');
  const state = o.state ?? 'running';
  if (state !== 'running' && state !== 'stopped') return bad('state is not running or stopped');
  if (o.sshName !== undefined && (typeof o.sshName !== 'string' || o.sshName.startsWith('-') || !SSH_NAME.test(o.sshName))) return bad('sshName is not an ssh destination');
  if (o.hostKey !== undefined && (typeof o.hostKey !== 'string' || !HOST_KEY.test(o.hostKey))) return bad('hostKey is not "<type> <base64>"');
  if (o.type !== undefined && typeof o.type !== 'string') return bad('type is not a string');
  return {
    id: o.id,
    state,
    ...(typeof o.type === 'string' && { type: o.type }),
    ...(typeof o.sshName === 'string' && { sshName: o.sshName }),
    ...(typeof o.hostKey === 'string' && { hostKey: o.hostKey }),
  };
}
