import { describe, expect, it } from 'vitest';
import { runNixLines } from '../src/nix/tools.ts';

describe('nix tools', () => {
  it('runs the real nix', async () => {
    const [v] = await runNixLines('nix', ['--version']);
    expect(v).toMatch(/^nix \(Nix\) \d+\.\d+/);
  });
});
