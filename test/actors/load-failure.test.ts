import { open } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { permanentLoadFailure } from '../../src/actors/load-failure.ts';
import { NixCommandError, NixFormatError, PathNotInStoreError, WorkerPoolClosedError, WorkerQueueFullError } from '../../src/errors/index.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { runNix } from '../../src/nix/tools.ts';

/** The error a real call rejects with. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => { throw new Error('expected a rejection'); }, (e: unknown) => e);
}

describe('which load failures abort a build', () => {
  it('permanent: not a store derivation path, unparsable, missing', async () => {
    const store = new LocalNixStore();
    expect(permanentLoadFailure(await rejection(store.readDerivation('/etc/passwd')))).toBe("store path: '/etc/passwd' is not in /nix/store");
    expect(permanentLoadFailure(await rejection(store.readDerivation(`/nix/store/${'0'.repeat(32)}-absent.drv`)))).toMatch(/^derivation missing: /);
    expect(permanentLoadFailure(new NixFormatError('derivation', 'expected string'))).toBe('derivation: expected string');
    expect(permanentLoadFailure(new PathNotInStoreError(['/nix/store/x.drv']))).toMatch(/x\.drv/);
  });

  it('transient: worker pool, Nix tools, file system errors other than a missing file', async () => {
    expect(permanentLoadFailure(new WorkerPoolClosedError())).toBeNull();
    expect(permanentLoadFailure(new WorkerQueueFullError(4))).toBeNull();
    expect(permanentLoadFailure(await rejection(runNix('nix-store', ['--no-such-option'])))).toBeNull();
    // A read error that is not about the path (here EBADF from a closed handle) is not the build's fault.
    const f = await open('/etc/hostname', 'r');
    await f.close();
    const ebadf = await rejection(f.read());
    expect((ebadf as NodeJS.ErrnoException).code).toBe('EBADF');
    expect(permanentLoadFailure(ebadf)).toBeNull();
    expect(permanentLoadFailure(new NixCommandError(['nix-store', '--serve'], null, 'connection reset'))).toBeNull();
  });
});
