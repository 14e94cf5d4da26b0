import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseProvisionerConfig } from '../../src/config/provisioner-config.ts';
import { CommandBackend } from '../../src/provision/command-backend.ts';
import { Provisioner } from '../../src/provision/provisioner.ts';
import { statusReader } from '../../src/provision/runner-status.ts';
import { startStatusServer } from '../../src/provision/status-server.ts';
import { quietLog } from '../helpers/runtime.ts';
import { launchBrowser, newPage, resultPath } from './harness.ts';

const root = mkdtempSync(join(tmpdir(), 'hydrant-provision-page-'));

describe("the provisioner's status page", () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('draws the provisioned-machine lifecycle with the machines of a running provisioner in their states', async () => {
    // A cloud of files: the command backend's scripts keep each machine as `cloud/<id>.json`.
    const cloud = join(root, 'cloud');
    mkdirSync(cloud, { recursive: true });
    const script = (op: string, code: string): string[] => {
      const file = join(root, `${op}.sh`);
      writeFileSync(file, `#!/bin/sh\nset -e\nIN=$(cat)\npython3 -c '${code}' "$IN"\n`);
      chmodSync(file, 0o755);
      return [file];
    };
    const status = join(root, 'status.json');
    writeFileSync(status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux:big': { runnable: 25, running: 0 } }, machines: {} }));
    const cfg = parseProvisionerConfig(
      {
        stateDir: join(root, 'state'),
        statusCommand: ['cat', status],
        machinesFile: join(root, 'machines'),
        backend: {
          type: 'command',
          create: script('create', `import json,sys; d=json.loads(sys.argv[1]); m={"id":d["id"],"state":"running","type":d["type"],"sshName":"root@"+d["id"]+".example","hostKey":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKt"}; open("${cloud}/"+d["id"]+".json","w").write(json.dumps(m)); print(json.dumps(m))`),
          destroy: script('destroy', `import json,sys,os; d=json.loads(sys.argv[1]); os.remove("${cloud}/"+d["id"]+".json")`),
          list: script('list', `import json,glob; print(json.dumps([json.load(open(f)) for f in glob.glob("${cloud}/*.json")]))`),
        },
        systemTypes: { 'x86_64-linux:big': { maxMachines: 2, runnablesPerMachine: 10, maxJobs: 4, sshKey: '/etc/hydra/id_buildfarm' } },
      },
      'test.toml',
    );
    const p = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog });
    const server = await startStatusServer('127.0.0.1:0', () => p.lastReport);
    try {
      const report = await p.pass();
      expect(report.machines.map((m) => m.state)).toEqual(['joining', 'joining']);

      const errors: string[] = [];
      const page = await newPage(browser, errors);
      await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
      await expect.poll(() => page.getByTestId('prov-machine').count(), { timeout: 20_000 }).toBe(2);
      // Every state of the lifecycle is drawn; the machines are counted in theirs.
      for (const s of ['requested', 'creating', 'backoff', 'joining', 'active', 'idle', 'stopping', 'stopped', 'starting', 'destroying', 'gone']) {
        expect(await page.getByTestId(`prov-diagram-state-${s}`).count(), s).toBe(1);
      }
      expect(await page.getByTestId('prov-diagram-state-joining').getAttribute('data-count')).toBe('2');
      expect(await page.getByTestId('prov-diagram-state-active').getAttribute('data-active')).toBe('false');
      const rows = page.getByTestId('prov-machine');
      for (const m of report.machines) expect(await rows.filter({ hasText: m.name }).getAttribute('data-state')).toBe('joining');
      expect(await page.getByTestId('prov-machines').textContent()).toContain(report.machines[0]!.reason);
      expect(await page.getByTestId('prov-status').textContent()).toBe('runner up');
      await page.screenshot({ path: resultPath('provisioner-page.png') });
      expect(errors).toEqual([]);
    } finally {
      p.close();
      await new Promise((r) => server.close(r));
    }
  }, 120_000);
});
