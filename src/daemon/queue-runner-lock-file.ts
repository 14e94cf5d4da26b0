import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { QueueRunnerLockFileError } from '../errors/index.ts';

/** flock(1)'s exit code when the lock is held elsewhere (asked for with --conflict-exit-code). */
const HELD_ELSEWHERE = 75;

/**
 * Hydra's queue-runner lock file, `<hydraDataDir>/queue-runner/lock`, held
 * as Hydra's runners hold it, so that Hydrant and Hydra's own runner refuse
 * to run together on one installation:
 * - the Rust runner takes `flock(LOCK_EX | LOCK_NB)` on `queue-runner/lock`
 *   (subprojects/hydra-queue-runner/src/lock_file.rs, `File::try_lock`);
 * - the C++ runner takes a Nix `PathLocks` on the same path
 *   (src/hydra-queue-runner/hydra-queue-runner.cc:530-540), which flocks
 *   `queue-runner/lock.lock` (Nix appends `.lock`).
 * Both files are locked. Node has no flock(), so `flock(1)` (util-linux)
 * holds them in a child process whose last command reads our pipe: the locks
 * go when we release them or when this process dies, however it dies (the
 * pipe closes).
 */
export class QueueRunnerLockFile {
  private constructor(
    readonly paths: readonly string[],
    private readonly holder: ChildProcess,
  ) {}

  /** Takes both locks now, or throws QueueRunnerLockFileError naming the file when another process holds one. */
  static async acquire(hydraDataDir: string): Promise<QueueRunnerLockFile> {
    const dir = join(hydraDataDir, 'queue-runner');
    mkdirSync(dir, { recursive: true });
    const paths = [join(dir, 'lock'), join(dir, 'lock.lock')];
    const nb = ['--nonblock', '--conflict-exit-code', String(HELD_ELSEWHERE)];
    // Detached: a Ctrl-C to our process group must not release the locks before we have stopped.
    const holder = spawn('flock', [...nb, paths[0]!, 'flock', ...nb, paths[1]!, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    let stderr = '';
    holder.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const outcome = await new Promise<'locked' | { code: number | null; err?: Error }>((resolve) => {
      holder.stdout!.once('data', () => resolve('locked'));
      holder.once('error', (err) => resolve({ code: null, err }));
      holder.once('exit', (code) => resolve({ code }));
    });
    if (outcome === 'locked') {
      // The holder must not keep the event loop alive; it ends with our pipe.
      holder.unref();
      for (const s of [holder.stdout, holder.stderr] as (NodeJS.ReadableStream & { unref?: () => void })[]) s.unref?.();
      (holder.stdin as unknown as { unref?: () => void }).unref?.();
      return new QueueRunnerLockFile(paths, holder);
    }
    if (outcome.code === HELD_ELSEWHERE) {
      throw new QueueRunnerLockFileError(`${paths[0]} is locked: Hydra's queue runner (or another Hydrant) is already running on this Hydra`);
    }
    const why = outcome.err?.message ?? (stderr.trim() || `flock exited with ${outcome.code}`);
    throw new QueueRunnerLockFileError(`cannot lock ${paths[0]}: ${why}`);
  }

  /** Releases both locks (the holder reads end of input and exits). */
  async release(): Promise<void> {
    if (this.holder.exitCode !== null || this.holder.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.holder.once('exit', () => resolve()));
    // Waited for while stopping: an unreferenced child would let the event loop run dry and
    // end the process (exit code 0) before the runner's own exit code is returned.
    this.holder.ref();
    this.holder.stdin!.end();
    await exited;
  }
}
