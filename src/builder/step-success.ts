import type { StepOutcome } from '../actors/builder-port.ts';
import { readBuildNixSupport } from '../nix/nix-support.ts';
import { nixSupportInfo } from '../publish/valid-outputs.ts';

type Success = Extract<StepOutcome, { kind: 'success' }>;

/**
 * A step that built: its outputs with the nix-support files they carry
 * (products, release name, metrics, failed) read from the local store.
 * `onDisk` maps a store path to where the store keeps it (a private store).
 */
export async function stepSuccess(step: Omit<Success, 'kind' | 'nixSupport'>, onDisk?: (path: string) => string): Promise<Success> {
  const ns = await readBuildNixSupport(step.outputs, onDisk);
  return { kind: 'success', ...step, nixSupport: nixSupportInfo(ns) };
}
