import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseMachines, type MachineSpec } from '../../src/config/machines-file.ts';
import { freePort } from '../../src/db/embedded.ts';
import { hostSystem } from '../../src/nix/host-system.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';

const run = promisify(execFile);

/**
 * A throwaway SSH build machine on 127.0.0.1: Debian's sshd in a mount
 * namespace whose /nix is a private store, one client key allowed to run
 * only `nix-store --serve --write` (the forced command hydra-provisioner's
 * README puts in authorized_keys). Needs root, openssh-server and unshare.
 */
export interface SshdServe {
  readonly dir: string;
  readonly port: number;
  /** The machine's store, as seen from outside its namespace. */
  readonly store: PrivateStore;
  /** The client's private key. */
  readonly keyFile: string;
  /** The host's public key line. */
  readonly hostKey: string;
  /** A machines-file line for this machine (`ssh://root@127.0.0.1:<port>`), host key in column 8. */
  line(columns?: Columns): string;
  spec(columns?: Columns): MachineSpec;
  /** Kills sshd and every process in its namespace (connections, their nix-store, builds). */
  kill(): Promise<void>;
  /** Starts sshd again (after kill, or killing it first) on the same port, keys and store. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** Machines-file columns to set (the rest as the recipe has them). */
export interface Columns {
  maxJobs?: number;
  /** Column 7, comma-separated: the machine takes only steps requiring them. */
  mandatoryFeatures?: string;
  hostKey?: string;
}

async function accepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Pids of the processes in mount namespace `ns` (a /proc/<pid>/ns/mnt link text). */
function processesInNamespace(ns: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readlinkSync(`/proc/${name}/ns/mnt`) === ns) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

export async function startSshdServe(): Promise<SshdServe> {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-sshd-'));
  const store = await PrivateStore.create(join(dir, 'remote'));
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'hostkey')]);
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'id')]);
  writeFileSync(join(dir, 'authorized_keys'), `command="nix-store --serve --write",restrict ${readFileSync(join(dir, 'id.pub'), 'utf8')}`);
  // The machine's Nix settings: no sandbox (as every Nix here), no substituters, builds as root (its own store has no
  // build users), and a feature "ssh" besides Nix's defaults, so that tests can send steps to it (machines-file column 7).
  mkdirSync(join(dir, 'etc'));
  writeFileSync(
    join(dir, 'etc', 'nix.conf'),
    'sandbox = false\nsubstituters =\nbuild-users-group =\nexperimental-features = nix-command\nextra-system-features = ssh\n',
  );
  const port = await freePort();
  writeFileSync(
    join(dir, 'sshd_config'),
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'hostkey')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PermitRootLogin forced-commands-only',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'StrictModes no',
      'UsePAM no',
      `PidFile ${join(dir, 'sshd.pid')}`,
      `SetEnv NIX_CONF_DIR=${join(dir, 'etc')}`,
      '',
    ].join('\n'),
  );
  mkdirSync('/run/sshd', { recursive: true }); // sshd's privilege-separation directory
  let sshd!: ChildProcess;
  let ns = '';
  const launch = async () => {
    sshd = spawn(
      'unshare',
      ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', 'mount --bind "$0" /nix && exec /usr/sbin/sshd -D -e -f "$1"', store.nixDir, join(dir, 'sshd_config')],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let sshdLog = '';
    sshd.stderr!.on('data', (b: Buffer) => (sshdLog = (sshdLog + b.toString()).slice(-4000)));
    for (let i = 0; !(await accepting(port)); i++) {
      if (sshd.exitCode !== null || i > 200) throw new Error(`sshd did not start: ${sshdLog}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    ns = readlinkSync(`/proc/${sshd.pid}/ns/mnt`);
  };
  await launch();
  const hostKey = readFileSync(join(dir, 'hostkey.pub'), 'utf8').trim();
  const line = (c: Columns = {}) =>
    `ssh://root@127.0.0.1:${port} ${hostSystem()} ${join(dir, 'id')} ${c.maxJobs ?? 2} 1 - ${c.mandatoryFeatures ?? '-'} ${Buffer.from(c.hostKey ?? hostKey).toString('base64')}`;
  const kill = async () => {
    for (const pid of processesInNamespace(ns)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (sshd.exitCode === null && sshd.signalCode === null) await new Promise((r) => sshd.once('exit', r));
  };
  const restart = async () => {
    await kill();
    await launch();
  };
  return {
    dir,
    port,
    store,
    keyFile: join(dir, 'id'),
    hostKey,
    line,
    spec: (c) => {
      const { machines, errors } = parseMachines(line(c), 'test');
      if (errors.length > 0) throw errors[0];
      return [...machines.values()][0]!;
    },
    kill,
    restart,
    stop: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
