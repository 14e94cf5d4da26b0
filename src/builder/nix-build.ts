import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { nixEnv, runNix } from '../nix/tools.ts';

/**
 * Builds one derivation with the real `nix-store --realise` and enforces
 * Hydra's per-step limits: Nix itself enforces the timeout and silence
 * limits (exit 101); the log size is counted here and the build stopped when
 * it exceeds the limit. The caller checks output sizes afterwards.
 */
export interface NixBuildLimits {
  maxSilentTime: number;
  buildTimeout: number;
  maxLogSize: number;
  /** Determinism check: rounds after the first (Nix's `repeat`), and whether a difference fails the build. */
  repeats?: number;
  enforceDeterminism?: boolean;
}

/** Rounds Nix ran and whether an output differed from the previous round (only with repeats). */
export interface NixBuildRounds {
  timesBuilt?: number;
  isNonDeterministic?: boolean;
}

export type NixBuildResult =
  /** `alreadyValid`: Nix built nothing, the outputs were valid already (known over a serve session only). */
  | ({ kind: 'built'; outputs: Map<string, string>; alreadyValid?: boolean } & NixBuildRounds)
  | ({ kind: 'failed'; status: 1 | 7 | 10 | 12; errorMsg: string } & NixBuildRounds)
  | { kind: 'error'; errorMsg: string };

export interface NixBuildHandle {
  done: Promise<NixBuildResult>;
  /** Stops the build and every process it started (see runNixBuild). */
  kill(): void;
}

/** How long nix-store may take to stop a build after SIGINT before it is SIGKILLed. */
export const NIX_STOP_GRACE_MS = 3000;

// nix-store --realise exit codes (Nix ≥ 2.0): 100 build failure, 101 timed out
// (wall clock or silence), 102 hash mismatch, 104 not deterministic.
function statusFor(code: number | null): 1 | 7 | 12 | null {
  if (code === 100 || code === 102) return 1;
  if (code === 101) return 7;
  if (code === 104) return 12;
  return null;
}

/**
 * What Nix's log says about the rounds of a repeated build: "building
 * '<drv>' (round k/n)..." per round, and "output '<path>' of '<drv>'
 * differs from previous round" when a round differed (Nix 2.8
 * build/derivation-goal.cc). Lines may be split across chunks.
 */
class RoundsSeen {
  private partial = '';
  timesBuilt = 0;
  differed = false;

  see(text: string): void {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!.slice(-1000);
    for (const l of lines) {
      const m = / \(round (\d+)\/\d+\)\.\.\.$/.exec(l);
      if (m) this.timesBuilt = Math.max(this.timesBuilt, Number(m[1]));
      if (/ differs from previous round$/.test(l)) this.differed = true;
    }
  }

  result(repeats: number): NixBuildRounds {
    if (repeats === 0) return {};
    this.see('\n');
    return { timesBuilt: this.timesBuilt, isNonDeterministic: this.differed };
  }
}

/**
 * Starts `cmd args` with the Nix environment; its stdout and stderr must be
 * pipes. The default runs the host's `nix-store` directly; a builder with a
 * private store passes one that enters it (NixStoreHandle.spawn).
 */
export type NixSpawner = (cmd: string, args: string[], env: NodeJS.ProcessEnv) => ChildProcess;

const spawnDirect: NixSpawner = (cmd, args, env) => spawn(cmd, args, { env: nixEnv('', env), stdio: ['ignore', 'pipe', 'pipe'] });

export function runNixBuild(
  drvPath: string,
  limits: NixBuildLimits,
  onLog: (chunk: Buffer) => void,
  env: NodeJS.ProcessEnv = process.env,
  spawner: NixSpawner = spawnDirect,
): NixBuildHandle {
  const args = [
    '--realise', drvPath,
    '--option', 'max-silent-time', String(limits.maxSilentTime),
    '--option', 'timeout', String(limits.buildTimeout),
  ];
  const repeats = limits.repeats ?? 0;
  if (repeats > 0) args.push('--option', 'repeat', String(repeats), '--option', 'enforce-determinism', limits.enforceDeterminism ? 'true' : 'false');
  const child = spawner('nix-store', args, env);
  if (!child.stdout || !child.stderr) throw new TypeError('runNixBuild: the spawner must pipe stdout and stderr');
  // SIGINT first: Nix then kills the build's process group itself, whereas a
  // SIGKILLed nix-store would leave the builder and its children running.
  // SIGKILL if nix-store lingers.
  let stopping = false;
  const stop = (): void => {
    if (stopping || child.exitCode !== null || child.signalCode !== null) return;
    stopping = true;
    child.kill('SIGINT');
    const t = setTimeout(() => child.kill('SIGKILL'), NIX_STOP_GRACE_MS);
    t.unref();
    child.once('close', () => clearTimeout(t));
  };
  let logBytes = 0;
  let logLimitHit = false;
  let tail = '';
  const rounds = new RoundsSeen();
  const out: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stdin?.end();
  child.stderr.on('data', (b: Buffer) => {
    if (logLimitHit) return;
    logBytes += b.length;
    if (logBytes > limits.maxLogSize) {
      logLimitHit = true;
      stop();
      return;
    }
    const text = b.toString('utf8');
    if (repeats > 0) rounds.see(text);
    tail = (tail + text).slice(-2000);
    onLog(b);
  });
  const done = new Promise<NixBuildResult>((resolve) => {
    child.on('error', (e) => resolve({ kind: 'error', errorMsg: `cannot run nix-store: ${e.message}` }));
    child.on('close', (code) => {
      const lastLines = tail.trim().split('\n').slice(-3).join('\n');
      if (logLimitHit) return resolve({ kind: 'failed', status: 10, errorMsg: `log limit of ${limits.maxLogSize} bytes exceeded` });
      if (code === 0) {
        const paths = Buffer.concat(out).toString('utf8').split('\n').filter(Boolean);
        return resolve({ kind: 'built', outputs: new Map(paths.map((p) => [p, p])), ...rounds.result(repeats) });
      }
      // Nix 2.8 exits 1 when an enforced check finds a difference; its message tells it apart.
      if (repeats > 0 && limits.enforceDeterminism && rounds.differed) {
        return resolve({ kind: 'failed', status: 12, errorMsg: lastLines, ...rounds.result(repeats) });
      }
      const status = statusFor(code);
      if (status !== null) return resolve({ kind: 'failed', status, errorMsg: lastLines, ...rounds.result(repeats) });
      resolve({ kind: 'error', errorMsg: `nix-store exited with ${code}: ${lastLines}` });
    });
  });
  return { done, kill: stop };
}

/**
 * Output name → path after a build: known paths as the .drv gives them, and
 * for floating content-addressed outputs the realisations Nix recorded.
 */
export async function builtOutputs(
  drvPath: string,
  outputs: readonly { name: string; path: string | null }[],
  env?: NodeJS.ProcessEnv,
): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  for (const o of outputs) if (o.path) result.set(o.name, o.path);
  if (result.size < outputs.length) {
    const { stdout } = await runNix('nix', ['realisation', 'info', '--json', drvPath], { env });
    const list = JSON.parse(stdout.toString('utf8')) as { id: string; outPath: string }[];
    for (const r of list) result.set(r.id.slice(r.id.lastIndexOf('!') + 1), `/nix/store/${r.outPath}`);
  }
  return result;
}

/** The NAR sizes of the joint closure of valid paths, summed (a multi-output build's closuresize). */
export async function jointClosureSize(paths: readonly string[], env?: NodeJS.ProcessEnv): Promise<number> {
  if (paths.length === 0) return 0;
  const { stdout } = await runNix('nix', ['path-info', '--json', '--recursive', ...paths], { env });
  // An array up to Nix 2.18, an object keyed by path after.
  const parsed = JSON.parse(stdout.toString('utf8')) as { narSize: number }[] | Record<string, { narSize: number }>;
  const list = Array.isArray(parsed) ? parsed : Object.values(parsed);
  return list.reduce((n, i) => n + i.narSize, 0);
}

/** NAR size and closure size of a valid path (Hydra's BuildSteps/Builds size columns). */
export async function pathSizes(paths: readonly string[], env?: NodeJS.ProcessEnv): Promise<Map<string, { narSize: number; closureSize: number }>> {
  if (paths.length === 0) return new Map();
  const { stdout } = await runNix('nix', ['path-info', '--json', '--closure-size', ...paths], { env });
  const list = JSON.parse(stdout.toString('utf8')) as { path: string; narSize: number; closureSize: number }[];
  return new Map(list.map((i) => [i.path, { narSize: i.narSize, closureSize: i.closureSize }]));
}
