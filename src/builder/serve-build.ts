import type { Derivation } from '../nix/derivation.ts';
import { ServePool, type ServeBuildResult } from '../nix/serve-session.ts';
import { NixBuildStatus } from '../nix/serve-wire.ts';
import { NIX_STOP_GRACE_MS, type NixBuildHandle, type NixBuildLimits, type NixBuildResult } from './nix-build.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';

/**
 * Builds over long-lived `nix-store --serve --write` sessions, one per build
 * slot (BuildDerivation, as Hydra's runner builds on its machines): no Nix
 * process start-up per step. Nix enforces the timeout, silence and log
 * limits itself; the build's log is the session's stderr.
 *
 * Only derivations whose every input path is known from the .drv files
 * qualify (see basicDerivation): a floating content-addressed input's path
 * is only known once Nix resolved it, which `nix-store --realise`
 * (runNixBuild) does.
 */

// Nix's BuildResult::Status values that are outcomes of the build itself.
const BUILT = new Set<number>([NixBuildStatus.Built, NixBuildStatus.Substituted, NixBuildStatus.AlreadyValid, NixBuildStatus.ResolvesToAlreadyValid]);
// E.g. OutputRejected is a fixed-output hash mismatch.
const BUILD_FAILURE = new Set<number>([NixBuildStatus.PermanentFailure, NixBuildStatus.OutputRejected, NixBuildStatus.CachedFailure]);

// Nix colours the names in its messages; BuildSteps.errorMsg is plain text.
// eslint-disable-next-line no-control-regex
const ANSI_ESCAPE = /\x1b\[[0-9;]*[A-Za-z]/g;

function toBuildResult(served: ServeBuildResult, limits: NixBuildLimits, outputs: Map<string, string>): NixBuildResult {
  const r = { ...served, errorMsg: served.errorMsg.replace(ANSI_ESCAPE, '') };
  // The rounds Nix ran, reported when a determinism check was asked for.
  const rounds = (limits.repeats ?? 0) > 0 ? { timesBuilt: r.timesBuilt, isNonDeterministic: r.isNonDeterministic } : {};
  if (BUILT.has(r.status)) {
    const alreadyValid = r.status === NixBuildStatus.AlreadyValid || r.status === NixBuildStatus.ResolvesToAlreadyValid;
    return { kind: 'built', outputs, ...(alreadyValid ? { alreadyValid } : {}), ...rounds };
  }
  if (r.status === NixBuildStatus.TimedOut) return { kind: 'failed', status: 7, errorMsg: r.errorMsg, ...rounds };
  if (r.status === NixBuildStatus.LogLimitExceeded) return { kind: 'failed', status: 10, errorMsg: `log limit of ${limits.maxLogSize} bytes exceeded`, ...rounds };
  if (r.status === NixBuildStatus.NotDeterministic) return { kind: 'failed', status: 12, errorMsg: r.errorMsg, ...rounds };
  if (BUILD_FAILURE.has(r.status)) return { kind: 'failed', status: 1, errorMsg: r.errorMsg, ...rounds };
  // Inputs rejected or missing, transient and miscellaneous failures: not the derivation's fault.
  return { kind: 'error', errorMsg: `nix-store --serve: build status ${r.status}: ${r.errorMsg}` };
}

/** Build sessions of one store: one per build running (the caller's slots bound how many), kept for the next. */
export class ServeBuilds {
  private readonly pool: ServePool;

  constructor(store: NixStoreHandle, slots = Number.POSITIVE_INFINITY) {
    this.pool = new ServePool(store, slots);
  }

  /** Builds `drv` (a basic derivation, see basicDerivation) with `limits`, passing its log to `onLog`. */
  run(drvPath: string, drv: Derivation, limits: NixBuildLimits, onLog: (chunk: Buffer) => void): NixBuildHandle {
    let stop: (() => void) | null = null;
    let stopped = false;
    const outputs = new Map([...drv.outputs.values()].map((o) => [o.path, o.path]));
    const options = {
      maxSilentTime: limits.maxSilentTime,
      buildTimeout: limits.buildTimeout,
      maxLogSize: Number.isFinite(limits.maxLogSize) ? limits.maxLogSize : 0,
      repeats: limits.repeats,
      enforceDeterminism: limits.enforceDeterminism,
    };
    const done = this.pool
      .use((session) => {
        if (stopped) throw new Error('stopped before it started');
        stop = () => session.stop(NIX_STOP_GRACE_MS);
        return session.buildDerivation(drvPath, drv, options, onLog);
      })
      .then(
        (r) => toBuildResult(r, limits, outputs),
        (e: Error): NixBuildResult => ({ kind: 'error', errorMsg: stopped ? 'the build was stopped' : e.message }),
      );
    return {
      done,
      kill: () => {
        stopped = true;
        stop?.();
      },
    };
  }
}
