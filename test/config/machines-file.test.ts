import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultMachinesFiles, loadMachinesFiles, MachinesFileWatcher, parseMachines, type MachinesChange } from '../../src/config/machines-file.ts';
import { MachinesFileError } from '../../src/errors/index.ts';

const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBH0t4qCk1wvUZn7pcG6tRu1HkPzRQ8QMCDzhb6UU1j root@builder';
const b64 = (s: string) => Buffer.from(s).toString('base64');
const dir = mkdtempSync(join(tmpdir(), 'hydrant-machines-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('machines file', () => {
  it('reads the columns as Hydra does, with its placeholders and defaults', () => {
    const text = [
      '# provisioned',
      `root@10.0.0.1 x86_64-linux,i686-linux /etc/keys/id 8 2.5 kvm,big-parallel benchmark ${b64(HOST_KEY + '\n')}   # trailing comment`,
      'builder2 aarch64-linux - ',
      'localhost x86_64-linux - - - - - -',
      'ssh://nix@[::1]:2222 x86_64-linux - 2',
    ].join('\n');
    const { machines, errors } = parseMachines(text, '/etc/nix/machines');
    expect(errors).toEqual([]);
    expect(machines.get('root@10.0.0.1')).toEqual({
      name: 'root@10.0.0.1',
      destination: 'root@10.0.0.1',
      host: '10.0.0.1',
      port: null,
      isLocalhost: false,
      systems: ['x86_64-linux', 'i686-linux'],
      sshKey: '/etc/keys/id',
      maxJobs: 8,
      speedFactor: 2.5,
      supportedFeatures: ['kvm', 'big-parallel', 'benchmark'],
      mandatoryFeatures: ['benchmark'],
      publicHostKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBH0t4qCk1wvUZn7pcG6tRu1HkPzRQ8QMCDzhb6UU1j',
      file: '/etc/nix/machines',
      line: 2,
    });
    expect(machines.get('builder2')).toMatchObject({ maxJobs: 1, speedFactor: 1, sshKey: null, supportedFeatures: [], publicHostKey: null, line: 3 });
    expect(machines.get('localhost')).toMatchObject({ isLocalhost: true, maxJobs: 1 });
    expect(machines.get('ssh://nix@[::1]:2222')).toMatchObject({ destination: 'nix@::1', host: '::1', port: 2222, maxJobs: 2 });
  });

  it('reports each bad line with its file and line, and loads the others', () => {
    const bad = [
      'good1 x86_64-linux -',
      'lonely', // too few columns
      '-oProxyCommand=touch/tmp/pwned x86_64-linux -', // an ssh option, not a host
      'h3 x86_64-linux - many', // max jobs
      'h4 x86_64-linux - 1 0', // speed factor 0
      'h5 x86_64-linux - 1 1 - - not*base64',
      `h6 x86_64-linux - 1 1 - - ${b64(`${HOST_KEY}\n@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBH`)}`, // a second known_hosts line smuggled in
      'ftp://h7 x86_64-linux -',
      'h8 x86_64-linux - 1 1 - - - extra-column',
      'h9 , -',
      '@/etc/other-machines',
      'h10 x86_64-linux - 1 1 "kvm" -',
      'good2 x86_64-linux - 3',
    ].join('\n');
    const { machines, errors } = parseMachines(bad, 'm.conf');
    expect([...machines.keys()]).toEqual(['good1', 'good2']);
    expect(errors.every((e) => e instanceof MachinesFileError && e.code === 'MACHINES_FILE' && e.file === 'm.conf')).toBe(true);
    expect(errors.map((e) => e.line)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(errors[0]!.message).toMatch(/^m\.conf:2: a machine needs at least 3 columns/);
    expect(errors[5]!.message).toMatch(/^m\.conf:7: the host key/);
  });

  it('merges several files, a later line replacing an earlier one of the same name (reported)', () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'x x86_64-linux - 1\ny x86_64-linux - 1\n');
    writeFileSync(b, 'x x86_64-linux - 4\n');
    const { machines, errors } = loadMachinesFiles([a, b, join(dir, 'absent')]);
    expect(machines.get('x')!.maxJobs).toBe(4);
    expect(machines.get('y')!.file).toBe(a);
    expect(errors.map((e) => e.message)).toEqual([`${b}:1: x is also at ${a}:1; this line replaces it`]);
    expect(defaultMachinesFiles({ NIX_REMOTE_SYSTEMS: `${a}:${b}` })).toEqual([a, b]);
    expect(defaultMachinesFiles({}, join(dir, 'absent'))).toEqual([]);
    expect(defaultMachinesFiles({}, a)).toEqual([a]);
  });

  it('a watcher reports added, removed and changed machines when a file changes', () => {
    const file = join(dir, 'watched');
    const write = (text: string) => {
      writeFileSync(`${file}.new`, text);
      renameSync(`${file}.new`, file); // as a provisioner replaces it
    };
    write('m1 x86_64-linux - 1\nm2 x86_64-linux - 1\n');
    const seen: MachinesChange[] = [];
    const w = new MachinesFileWatcher([file], (c) => seen.push(c));
    expect(w.check()).toBe(true);
    expect(seen[0]!.added.map((m) => m.name)).toEqual(['m1', 'm2']);
    expect(w.check()).toBe(false);

    write('# m1 is gone\nm2 x86_64-linux - 4\nm3 aarch64-linux - 1\nbroken\n');
    expect(w.check()).toBe(true);
    const c = seen[1]!;
    expect(c.added.map((m) => m.name)).toEqual(['m3']);
    expect(c.removed.map((m) => m.name)).toEqual(['m1']);
    expect(c.changed.map((m) => [m.name, m.maxJobs])).toEqual([['m2', 4]]);
    expect(c.errors.map((e) => e.line)).toEqual([4]);
    // A line moving without changing is no change.
    write('\nm2 x86_64-linux - 4\nm3 aarch64-linux - 1\n');
    expect(w.check()).toBe(true);
    expect(seen[2]).toMatchObject({ added: [], removed: [], changed: [] });
    rmSync(file);
    expect(w.check()).toBe(true);
    expect(seen[3]!.removed.map((m) => m.name).sort()).toEqual(['m2', 'm3']);
    expect(w.machines.size).toBe(0);
  });
});
