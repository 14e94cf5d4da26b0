import { spawn } from 'node:child_process';
import { dirname } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { SystemTypeConfig } from '../config/provisioner-config.ts';
import { ProvisionBackendError } from '../errors/index.ts';
import { writeAtomic } from './local-backend.ts';

export interface SshMachineLine {
  readonly sshName: string;
  readonly hostKey?: string;
  readonly type: SystemTypeConfig;
}

/**
 * One Hydra machines-file line (docs/SSH-MACHINES.md), as hydra-provisioner
 * writes it: `<sshName> <systems> <sshKey|-> <maxJobs> <speedFactor>
 * <features|-> <features|-> <base64 host key|->`. The type's features are
 * both supported and mandatory, so only steps asking for them go there;
 * an x86_64-linux machine also builds i686-linux.
 */
export function machinesFileLine(m: SshMachineLine): string {
  const t = m.type;
  const systems = t.system === 'x86_64-linux' ? 'x86_64-linux,i686-linux' : t.system;
  const features = t.features.length > 0 ? t.features.join(',') : '-';
  const hostKey = m.hostKey ? Buffer.from(m.hostKey).toString('base64') : '-';
  return [m.sshName, systems, t.sshKey, String(t.maxJobs), String(t.speedFactor), features, features, hostKey].join(' ');
}

export function machinesFileText(lines: readonly SshMachineLine[]): string {
  const sorted = [...lines].sort((a, b) => (a.sshName < b.sshName ? -1 : a.sshName > b.sshName ? 1 : 0));
  return `# written by hydrant provision\n${sorted.map((m) => `${machinesFileLine(m)}\n`).join('')}`;
}

/** Writes the machines file: to `path` atomically (mode 600), or on the stdin of `updateCommand` (hydra-provisioner's way). */
export async function publishMachinesFile(text: string, to: { machinesFile?: string; updateCommand?: readonly string[] }): Promise<void> {
  if (to.machinesFile) {
    await mkdir(dirname(to.machinesFile), { recursive: true });
    await writeAtomic(to.machinesFile, text);
    return;
  }
  if (!to.updateCommand) return;
  const [cmd, ...args] = to.updateCommand;
  await new Promise<void>((resolve, reject) => {
    const child = spawn(cmd!, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdin.on('error', () => {});
    child.on('error', (err) => reject(new ProvisionBackendError('updateCommand', null, err.message, { cause: err })));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new ProvisionBackendError('updateCommand', null, `${cmd} exited ${code}: ${stderr.trim().slice(-200)}`))));
    child.stdin.end(text);
  });
}
