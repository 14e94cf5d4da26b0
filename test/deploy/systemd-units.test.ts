import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadRunnerConfig } from '../../src/config/runner-config.ts';

const DEPLOY = resolve(import.meta.dirname, '../../deploy');
const REPO = resolve(import.meta.dirname, '../..');
const UNITS = ['hydrant-queue-runner.service', 'hydrant-builder.service'];

/** A unit file's sections → key → values (a key may repeat), comments and blank lines dropped. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | null = null;
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!kv || !current) throw new Error(`line ${i + 1}: not a key=value in a section: ${raw}`);
    current.set(kv[1]!, [...(current.get(kv[1]!) ?? []), kv[2]!]);
  }
  return sections;
}

const which = (cmd: string): string | null => {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
};

describe('deploy/: systemd units and the example configuration', () => {
  const units = Object.fromEntries(UNITS.map((u) => [u, parseUnit(readFileSync(join(DEPLOY, u), 'utf8'))]));

  it('each unit restarts, drains on SIGTERM, keeps a state directory and is hardened', () => {
    for (const [name, u] of Object.entries(units)) {
      const service = u.get('Service')!;
      const one = (k: string): string | undefined => service.get(k)?.at(-1);
      expect(u.get('Install')?.get('WantedBy'), name).toEqual(['multi-user.target']);
      expect(one('Restart'), name).toMatch(/^(on-failure|always)$/);
      expect(one('KillSignal'), name).toBe('SIGTERM');
      expect(one('StateDirectory'), name).toBeTruthy();
      for (const k of ['NoNewPrivileges', 'PrivateTmp', 'ProtectHome', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectControlGroups', 'RestrictSUIDSGID']) expect(one(k), `${name} ${k}`).toBe('yes');
      expect(one('ProtectSystem'), name).toBe('strict');
      // Node's JIT needs writable executable memory.
      expect(service.has('MemoryDenyWriteExecute'), name).toBe(false);
      expect(u.get('Unit')?.get('StartLimitIntervalSec'), name).toEqual(['0']);
    }
    const runner = units['hydrant-queue-runner.service']!.get('Service')!;
    expect(runner.get('ExecStart')![0]).toMatch(/ serve --config \/etc\/hydrant\/runner\.toml\b/);
    expect(runner.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    // The runner writes Hydra's logs, its lock and GC roots.
    expect(runner.get('ReadWritePaths')![0]!.split(' ')).toEqual(expect.arrayContaining(['/var/lib/hydra', '/nix/var/nix/gcroots']));
    const builder = units['hydrant-builder.service']!.get('Service')!;
    expect(builder.get('ExecStart')![0]).toMatch(/ builder --server \S+:\d+ --token-file \$\{CREDENTIALS_DIRECTORY\}\/token --tls-ca \S+ --store-dir \$\{STATE_DIRECTORY\}\/store\b/);
  });

  it('systemd-analyze verify accepts both units (paths pointed at this checkout), without a warning', () => {
    // .ci/run installs systemd for this command; without it the test fails rather than pass unchecked.
    const analyze = which('systemd-analyze');
    expect(analyze, 'systemd-analyze (Debian package systemd) is needed').toBeTruthy();
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-units-'));
    for (const u of UNITS) {
      const text = readFileSync(join(DEPLOY, u), 'utf8')
        .replaceAll('/usr/bin/node', process.execPath)
        .replaceAll('/opt/hydrant', REPO)
        .replaceAll('/bin/kill', which('kill') ?? '/bin/kill');
      writeFileSync(join(dir, u), text);
    }
    const r = spawnSync(analyze!, ['verify', '--man=no', ...UNITS.map((u) => join(dir, u))], { encoding: 'utf8' });
    // An unknown key or a bad value is only a warning (exit 0): any line about the units fails the test.
    const about = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes(dir));
    expect(about).toEqual([]);
    expect(r.status).toBe(0);
  });

  it('the example runner.toml is a valid configuration, with the keys the unit relies on', () => {
    const c = loadRunnerConfig(join(DEPLOY, 'runner.toml'), {}, {});
    expect(c).toMatchObject({ hydraDataDir: '/var/lib/hydra', stateDir: '/var/lib/hydrant', httpListen: '127.0.0.1:8080', rootsDir: '/nix/var/nix/gcroots/hydra' });
    expect(c.machinesFiles).toEqual(['/etc/nix/machines']);
    expect(c.tokenPaths).toEqual(['/etc/hydrant/builder-token']);
    expect(c.grpcTls).toMatchObject({ certFile: '/etc/hydrant/runner-cert.pem' });
  });

  it("the builder unit's flags are ones `hydrant builder` takes", () => {
    const exec = units['hydrant-builder.service']!.get('Service')!.get('ExecStart')![0]!;
    const flags = [...exec.matchAll(/ (--[a-z-]+)/g)].map((m) => m[1]!);
    const help = execFileSync(process.execPath, [join(REPO, 'bin/hydrant.js'), 'builder', '--help'], { encoding: 'utf8' });
    for (const f of flags) expect(help, f).toContain(f);
  });
});
