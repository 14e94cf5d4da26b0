/**
 * This host's Nix system type as Nix names it, e.g. x86_64-linux or
 * aarch64-darwin: the default `systems` of a builder agent and of the
 * runner's local builder.
 */
export function hostSystem(arch: string = process.arch, platform: string = process.platform): string {
  const cpu: Record<string, string> = { x64: 'x86_64', arm64: 'aarch64', ia32: 'i686', arm: 'armv7l', riscv64: 'riscv64', ppc64: 'powerpc64le' };
  return `${cpu[arch] ?? arch}-${platform === 'darwin' ? 'darwin' : platform}`;
}
