/**
 * The wire of Nix's serve protocol (`nix-store --serve`), shared by its two
 * clients: ServeConnection (serve-protocol.ts: build machines, bounded reads
 * of an untrusted peer) and ServeSession (serve-session.ts: the local store's
 * pooled sessions, replies parsed in one synchronous pass). Constants, types,
 * the request framing and the BuildDerivation request are written here once.
 *
 * Wire format (Nix's serialise.cc): u64 little-endian numbers and booleans;
 * a string is its length, its bytes, zero padding to 8; a list or set is a
 * count and its items.
 */
import type { Derivation } from './derivation.ts';

export const SERVE_MAGIC_1 = 0x390c9deb;
export const SERVE_MAGIC_2 = 0x5452eecb;
/** The version this client speaks: 2.6 (Hydra's runner since 2022; builtOutputs in BuildDerivation's reply). */
export const SERVE_CLIENT_VERSION = 0x206;
/** The oldest peer accepted: 2.4 is the first whose QueryPathInfos carries the NAR hash (outputs cannot be verified without it). */
export const SERVE_MIN_VERSION = 0x204;

export const ServeCommand = Object.freeze({
  QueryValidPaths: 1,
  QueryPathInfos: 2,
  DumpStorePath: 3,
  ImportPaths: 4,
  ExportPaths: 5,
  BuildPaths: 6,
  QueryClosure: 7,
  BuildDerivation: 8,
  AddToStoreNar: 9,
} as const);

export const protocolMinor = (v: number): number => v & 0xff;
export const protocolMajor = (v: number): number => v & 0xff00;

/** Nix's BuildResult::Status values. */
export const NixBuildStatus = Object.freeze({
  Built: 0,
  Substituted: 1,
  AlreadyValid: 2,
  PermanentFailure: 3,
  InputRejected: 4,
  OutputRejected: 5,
  TransientFailure: 6,
  CachedFailure: 7,
  TimedOut: 8,
  MiscFailure: 9,
  DependencyFailed: 10,
  LogLimitExceeded: 11,
  NotDeterministic: 12,
  ResolvesToAlreadyValid: 13,
  NoSubstituters: 14,
} as const);

/** The settings BuildDerivation carries; Nix enforces them (0 = no limit). */
export interface ServeBuildSettings {
  maxSilentTime: number;
  buildTimeout: number;
  maxLogSize: number;
  /** Determinism check: rounds after the first (`build-repeat`), and whether a difference fails the build. */
  repeats?: number;
  enforceDeterminism?: boolean;
}

/** BuildDerivation's reply. */
export interface ServeBuildResult {
  /** A NixBuildStatus value. */
  status: number;
  errorMsg: string;
  timesBuilt: number;
  isNonDeterministic: boolean;
  /** Unix seconds on the builder, 0 when it did not say. */
  startTime: number;
  stopTime: number;
  /** `sha256:<hex>!<output>` → Realisation JSON, from peers at 2.6 or later. */
  builtOutputs: Map<string, string>;
}

/** QueryPathInfos' answer for a valid path. */
export interface ServePathInfo {
  path: string;
  deriver: string | null;
  references: string[];
  downloadSize: number;
  narSize: number;
  /** As sent: `sha256:<nix32>`. */
  narHash: string;
  ca: string | null;
  sigs: string[];
}

/** One request, as the serve protocol frames it. */
export class ServeFrame {
  private readonly parts: Buffer[] = [];

  num(n: number | boolean): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(typeof n === 'boolean' ? (n ? 1 : 0) : n));
    this.parts.push(b);
    return this;
  }

  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    this.num(b.length).parts.push(b);
    if (b.length % 8) this.parts.push(Buffer.alloc(8 - (b.length % 8)));
    return this;
  }

  strs(xs: Iterable<string>): this {
    const list = Array.isArray(xs) ? (xs as readonly string[]) : [...xs];
    this.num(list.length);
    for (const x of list) this.str(x);
    return this;
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const byKey = <T>(m: ReadonlyMap<string, T>): [string, T][] => [...m].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

/**
 * BuildDerivation of a basic derivation (its inputs among `inputSrcs`). The
 * server reads the settings by the client's version (2.6): maxLogSize from
 * 2.2, repeats and enforceDeterminism from 2.3 (Hydra's build-remote.cc:343-344).
 */
export function buildDerivationRequest(drvPath: string, drv: Derivation, settings: ServeBuildSettings): ServeFrame {
  const f = new ServeFrame().num(ServeCommand.BuildDerivation).str(drvPath).num(drv.outputs.size);
  for (const [name, o] of byKey(drv.outputs)) f.str(name).str(o.path).str(o.hashAlgo).str(o.hash);
  f.strs([...new Set(drv.inputSrcs)].sort()).str(drv.system).str(drv.builder).strs(drv.args).num(drv.env.size);
  for (const [k, v] of byKey(drv.env)) f.str(k).str(v);
  return f.num(settings.maxSilentTime).num(settings.buildTimeout).num(settings.maxLogSize).num(settings.repeats ?? 0).num(settings.enforceDeterminism === true);
}
