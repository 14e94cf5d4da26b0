import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HYDRANT_BIN, HYDRANT_NODE_FLAGS, hydrantArgv, shebangFlags } from '../../src/util/hydrant-bin.ts';

describe('the Node flags hydrant runs with', () => {
  it('are read from the entry line, and a line of another form is refused', () => {
    expect(shebangFlags('#!/usr/bin/env -S node --a=1 --b-c\nrest')).toEqual(['--a=1', '--b-c']);
    expect(shebangFlags('#!/usr/bin/env -S node\n')).toEqual([]);
    expect(() => shebangFlags('#!/usr/bin/env node --x\n')).toThrow(/expected/);
    expect(() => shebangFlags('#!/bin/sh -S node --x\n')).toThrow(/expected/);
  });

  it('include the heap growth setting, and this Node accepts them', () => {
    expect(HYDRANT_NODE_FLAGS).toContain('--heap-growing-percent=200');
    const r = spawnSync(process.execPath, [...HYDRANT_NODE_FLAGS, '-e', '0'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('are what a child started through hydrantArgv runs with, before any extra flag', () => {
    const argv = hydrantArgv(['builder', '--help'], ['--cpu-prof']);
    expect(argv).toEqual([...HYDRANT_NODE_FLAGS, '--cpu-prof', HYDRANT_BIN, 'builder', '--help']);
  });

  it('apply when the entry is run directly, as the installed command is', () => {
    // A preloaded probe prints the flags of the process the kernel started from the entry line.
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-flags-'));
    try {
      const probe = join(dir, 'probe.cjs');
      writeFileSync(probe, 'process.stderr.write(`execArgv=${JSON.stringify(process.execArgv)}\\n`);\n');
      const r = spawnSync(HYDRANT_BIN, ['help'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: `--require ${probe}` } });
      expect(r.status).toBe(0);
      const seen = JSON.parse(/execArgv=(.*)/.exec(r.stderr)![1]!) as string[];
      expect(seen).toEqual(HYDRANT_NODE_FLAGS);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
