import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadProvisionerConfig } from '../../src/config/provisioner-config.ts';
import { ConfigError } from '../../src/errors/index.ts';
import { runCli } from '../helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'hydrant-provision-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BASE = `stateDir = "${dir}/state"
statusUrl = "http://127.0.0.1:8080"
[backend]
type = "local"
server = "127.0.0.1:9000"
tokenFile = "${dir}/token"
`;

function load(text: string): ReturnType<typeof loadProvisionerConfig> {
  const file = join(dir, `c-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, text);
  return loadProvisionerConfig(file);
}

function problem(text: string): string {
  try {
    load(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
  throw new Error('accepted');
}

describe('provisioner configuration', () => {
  it("takes hydra-provisioner's keys with its defaults, per system type with features", () => {
    const c = load(`${BASE}[systemTypes."x86_64-linux"]\nmaxMachines = 3\n[systemTypes."x86_64-linux:kvm,big"]\nstopOnIdle = true\ngracePeriod = 600\n`);
    expect(c.tag).toBe('hydrant-provisioned');
    expect(c.systemTypes['x86_64-linux']).toMatchObject({ minMachines: 0, maxMachines: 3, ignoredRunnables: 0, runnablesPerMachine: 10, maxJobs: 1, speedFactor: 1, sshKey: '-', stopOnIdle: false, gracePeriod: 0, system: 'x86_64-linux', features: [] });
    expect(c.systemTypes['x86_64-linux:kvm,big']).toMatchObject({ system: 'x86_64-linux', features: ['kvm', 'big'], stopOnIdle: true, gracePeriod: 600 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('refuses hostile or wrong lines, one line naming the key', () => {
    const t = '[systemTypes."x86_64-linux"]\n';
    expect(problem(`${BASE}${t}maxMachines = -1\n`)).toMatch(/systemTypes\.x86_64-linux\.maxMachines: .*>=0/);
    expect(problem(`${BASE}${t}minMachines = 3\nmaxMachines = 1\n`)).toMatch(/minMachines is greater than maxMachines/);
    expect(problem(`${BASE}${t}runnablesPerMachine = 0\n`)).toMatch(/runnablesPerMachine/);
    expect(problem(`${BASE}${t}maxJobs = 1.5\n`)).toMatch(/maxJobs/);
    expect(problem(`${BASE}${t}gracePeriod = "1h"\n`)).toMatch(/gracePeriod/);
    expect(problem(`${BASE}${t}nixopsExpr = "./deployment.nix"\n`)).toMatch(/unknown key nixopsExpr in systemTypes\.x86_64-linux \(a typo\? docs\/PROVISIONER\.md lists the keys\)/);
    expect(problem(`${BASE}[systemTypes."x86_64-linux:"]\n`)).toMatch(/not a system type/);
    expect(problem(`${BASE}[systemTypes."-oProxyCommand=sh"]\n`)).toMatch(/not a system type/);
    expect(problem(`${BASE}[systemTypes."x86_64-linux:kvm;rm -rf"]\n`)).toMatch(/not a system type/);
    expect(problem(BASE)).toMatch(/systemTypes is required|none configured/);
    expect(problem(`${BASE.replace('statusUrl = "http://127.0.0.1:8080"', 'statusCommand = ["hydrant", "status"]\nstatusUrl = "http://x:1"')}${t}`)).toMatch(/exactly one of statusUrl and statusCommand/);
    expect(problem(`${BASE.replace('statusUrl = "http://127.0.0.1:8080"', 'statusCommand = []')}${t}`)).toMatch(/statusCommand: must name a program/);
    expect(problem(`tag = "../../etc"\n${BASE}${t}`)).toMatch(/tag: letters, digits/);
    expect(problem(`${BASE.replace('type = "local"', 'type = "nixops"')}${t}`)).toMatch(/backend\.type/);
    expect(problem(`${BASE}${t}stopOnIdle = true\n`.replace(/\[backend\][^[]*/, '[backend]\ntype = "command"\ncreate = ["c"]\ndestroy = ["d"]\nlist = ["l"]\n'))).toMatch(/stopOnIdle needs the command backend's start and stop/);
    expect(problem(`${BASE}${t}maxMachines = 2\nmaxMachines = 3\n`)).toMatch(/invalid TOML/);
  });

  it('hydrant provision prints one line and exits 1 on a bad file', async () => {
    const file = join(dir, 'bad.toml');
    writeFileSync(file, `${BASE}[systemTypes."x86_64-linux"]\nmaxMachines = "many"\n`);
    const r = await runCli(['provision', '--config', file, '--once']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^hydrant: CONFIG\w*: .*bad\.toml: systemTypes\.x86_64-linux\.maxMachines: /);
  });
});
