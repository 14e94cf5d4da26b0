import { describe, expect, it } from 'vitest';
import { hostSystem } from '../../src/nix/host-system.ts';

describe('hostSystem', () => {
  it('names the system as Nix does', () => {
    expect(hostSystem('x64', 'linux')).toBe('x86_64-linux');
    expect(hostSystem('arm64', 'linux')).toBe('aarch64-linux');
    expect(hostSystem('arm64', 'darwin')).toBe('aarch64-darwin');
    expect(hostSystem('ia32', 'linux')).toBe('i686-linux');
    expect(hostSystem('riscv64', 'linux')).toBe('riscv64-linux');
  });
});
