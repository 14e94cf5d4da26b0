import { isIP } from 'node:net';
import { z } from 'zod';
import { ConfigError } from '../errors/index.ts';
import { MACHINE_FREE_FNS, MACHINE_SORT_FNS, STEP_SORT_FNS } from './scheduling-fns.ts';
import { defaultMachinesFiles } from './machines-file.ts';
import { applyAliases, checkDbUrl, DB_URL_FORM, formatIssues, NO_FILE, readTomlWithOverrides } from './toml-file.ts';

/** HOST:PORT, [IPv6]:PORT. */
const LISTEN = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/;
const LISTEN_MESSAGE = 'must be HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)';

/**
 * Keys of Hydra's Rust queue runner (subprojects/hydra-queue-runner/src/config.rs,
 * `AppConfig`) that Hydrant accepts, with upstream's defaults, but does not act
 * on (docs/OPERATIONS.md says why for each). A configuration that sets one
 * is warned about once at start, by name (`RunnerConfig.withoutEffect`).
 */
const UPSTREAM_WITHOUT_EFFECT = {
  /** Upstream: a queue pass stops loading builds after this long. Hydrant's queue monitor loads in bounded batches without a pass deadline. */
  stopQueueRunAfterInS: z.number().int().default(60),
  /** Upstream: downloads a builder makes at once. */
  maxConcurrentDownloads: z.number().int().nonnegative().default(5),
  /** Upstream: uploads to the caches at once. */
  concurrentUploadLimit: z.number().int().nonnegative().default(5),
  /** Upstream: re-checks fixed-output derivations. */
  enableFodChecker: z.boolean().default(false),
  /** Upstream: substituters forced on builders with presigned uploads. */
  forcedSubstituters: z.array(z.string()).default([]),
  /** Upstream: an S3 store for steps only the listed jobsets need. */
  overflowStore: z
    .object({ store: z.string().regex(/^s3:\/\//, 'must be an s3:// store URI'), jobsets: z.array(z.string()) })
    .strict()
    .optional(),
};

/**
 * The runner's configuration: TOML with the Rust queue runner's camelCase
 * keys (REFERENCE §5), validated once into a frozen object. Unknown keys are
 * errors, so a typo never silently falls back to a default.
 */
const RunnerConfigSchema = z
  .object({
    hydraDataDir: z.string().min(1).default('/var/lib/hydra'),
    /** Hydrant's own state (embedded database, keys); defaults to <hydraDataDir>/hydrant. */
    stateDir: z.string().min(1).optional(),
    dbUrl: z.string().min(1).optional(),
    maxDbConnections: z.number().int().positive().default(128),
    machineSortFn: z.enum(MACHINE_SORT_FNS).default('BogomipsWithSpeedFactor'),
    machineFreeFn: z.enum(MACHINE_FREE_FNS).default('Static'),
    stepSortFn: z.enum(STEP_SORT_FNS).default('WithRdeps'),
    dispatchTriggerTimerInS: z.number().int().default(120),
    queueTriggerTimerInS: z.number().int().default(-1),
    remoteStoreAddr: z.array(z.string().min(1)).default([]),
    /** A shared AWS credentials file for s3:// caches (else AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials). */
    awsCredentialsFile: z.string().min(1).optional(),
    /** Builders upload outputs straight to the first s3:// cache through presigned URLs (docs/CACHES.md). */
    usePresignedUploads: z.boolean().default(false),
    // Substitution (docs/SUBSTITUTION.md): a step's outputs fetched from these caches instead of built.
    useSubstitutes: z.boolean().default(false),
    /** `file://`, `http(s)://`, `s3://` caches and `ssh://` serve peers, asked in order (Nix: substituters). */
    substituters: z.array(z.string().min(1)).default([]),
    /** `name:base64` keys; a substituted path needs a signature by one (Nix: trusted-public-keys). */
    trustedPublicKeys: z.array(z.string().min(1)).default([]),
    /** How long a narinfo found or missing is remembered (Nix's narinfo-cache-positive-ttl / -negative-ttl). */
    substitutePositiveTtlInS: z.number().nonnegative().default(30 * 86400),
    substituteNegativeTtlInS: z.number().nonnegative().default(3600),
    /** How long a substituter that failed (unreachable, HTTP error) is skipped before it is asked again (docs/CACHES.md; Nix: 60 s). */
    substituterBackoffInS: z.number().nonnegative().default(60),
    rootsDir: z.string().optional(),
    maxRetries: z.number().int().nonnegative().default(5),
    retryInterval: z.number().nonnegative().default(60),
    retryBackoff: z.number().positive().default(3.0),
    maxUnsupportedTimeInS: z.number().int().nonnegative().default(120),
    tokenPaths: z.array(z.string().min(1)).default([]),
    /** Bearer tokens for the HTTP API's write endpoints (PUT /build); none: they are refused. */
    apiTokenPaths: z.array(z.string().min(1)).default([]),
    /** Per-output NAR size limit in bytes; 0 (as upstream) sets none. */
    maxOutputSize: z.number().int().nonnegative().default(0),
    maxSilentTime: z.number().int().positive().default(3600),
    buildTimeout: z.number().int().positive().default(36000),
    maxLogSize: z.number().int().positive().default(64 * 1024 * 1024),
    grpcListen: z.string().regex(LISTEN, LISTEN_MESSAGE).default('127.0.0.1:50051'),
    /** TLS for the builder protocol; with clientCaFile, builders must present a certificate it signed. */
    grpcTls: z
      .object({ certFile: z.string().min(1), keyFile: z.string().min(1), clientCaFile: z.string().min(1).optional() })
      .strict()
      .optional(),
    /** Serve the builder protocol without TLS on a non-loopback grpcListen (tokens and NARs in clear). */
    grpcInsecure: z.boolean().default(false),
    /** The status API, /metrics and the visualizer; "" turns them off. */
    httpListen: z.union([z.literal(''), z.string().regex(LISTEN, `${LISTEN_MESSAGE}, or "" to turn it off`)]).default('127.0.0.1:8080'),
    workerThreads: z.number().int().positive().default(2),
    /**
     * Backup buckets (Hydra's S3Backup plugin, docs/CACHES.md "Backup buckets"): the
     * closure of every build of a matching job that ends with status 0 or 6 is copied
     * to the bucket as a signed binary cache.
     */
    s3Backup: z
      .array(
        z
          .object({
            /** The bucket (`s3://NAME`, AWS's endpoint and credentials); or `store`, a full store URI. */
            name: z.string().min(1).optional(),
            store: z.string().regex(/^(s3|file):\/\//, 'must be an s3:// or file:// store URI').optional(),
            /** A regular expression that must match the whole `project:jobset:job`. */
            jobs: z
              .string()
              .min(1)
              .refine((s) => {
                try {
                  return new RegExp(s) instanceof RegExp;
                } catch {
                  return false;
                }
              }, 'is not a valid regular expression'),
            /** NAR compression (the plugin's compression_type): bzip2 by default. */
            compression: z.enum(['bzip2', 'xz', 'zstd', 'br', 'none']).optional(),
            /** Prepended to every key; ends in `/` (a directory) or is empty. */
            prefix: z.string().regex(/^$|^[^/].*\/$/, 'must be empty or end in / (and not start with it)').refine((p) => !p.split('/').includes('..'), 'must not contain ..').default(''),
            /** The signing key's file; default: the first remoteStoreAddr's secret-key. */
            secretKey: z.string().min(1).optional(),
            /** First retry of a failed backup after this long; each next one waits twice as long, up to an hour. */
            retryInS: z.number().positive().default(30),
          })
          .strict()
          .refine((b) => (b.name === undefined) !== (b.store === undefined), 'set exactly one of name (a bucket) and store (a store URI)'),
      )
      .default([]),
    /** On SIGTERM, how long running steps may take to finish before they are aborted. */
    shutdownGraceInS: z.number().nonnegative().default(30),
    /** How long the runner rides out an unreachable database before it exits non-zero. */
    dbGiveUpAfterInS: z.number().positive().default(600),
    /** A round trip on the lock's connection this often (and its reply within as long), so that a hung server or a dead connection is noticed. */
    dbHeartbeatInS: z.number().positive().default(5),
    /** Result writes waiting for the database beyond which dispatch pauses. */
    maxPendingDbWrites: z.number().int().positive().default(10_000),
    /** When another runner holds the database's lock, wait as a hot standby instead of exiting. */
    standby: z.boolean().default(false),
    /** How long a disconnected builder keeps its jobs before they are retried elsewhere. */
    builderGraceInS: z.number().nonnegative().default(60),
    /** A builder that sends nothing for this long is treated as disconnected. */
    builderPingTimeoutInS: z.number().positive().default(60),
    /** Jobs to build with Nix on the runner's own host (0: only remote builders). */
    localBuilderJobs: z.number().int().nonnegative().default(0),
    localBuilderSystems: z.array(z.string().min(1)).optional(),
    localBuilderFeatures: z.array(z.string().min(1)).default(['local', 'ca-derivations']),
    /**
     * Hydra machines files listing SSH build machines (docs/SSH-MACHINES.md).
     * Unset: as Hydra, $NIX_REMOTE_SYSTEMS (`:`-separated), else /etc/nix/machines
     * when it exists; [] for none.
     */
    machinesFiles: z.array(z.string().min(1)).optional(),
    /** How often the machines files are checked for changes (Hydra: 30 s). */
    machinesFilesCheckInS: z.number().positive().default(30),
    /**
     * Determinism checks: steps needed by a build of `project:jobset` are built N more
     * times (Hydra's C++ runner `xxx-jobset-repeats`; src/actors/determinism.ts).
     */
    jobsetRepeats: z.array(z.string().regex(/^[^:\s]+:[^:\s]+:\d+$/, 'must be project:jobset:N')).default([]),
    ...UPSTREAM_WITHOUT_EFFECT,
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.grpcTls && c.grpcInsecure) {
      ctx.addIssue({ code: 'custom', path: ['grpcInsecure'], message: 'grpcInsecure = true contradicts grpcTls; set one of them' });
    }
    // Off loopback, tokens and NARs would cross the network in clear: refused unless asked for.
    if (c.tokenPaths.length > 0 && !c.grpcTls && !c.grpcInsecure && !isLoopbackListen(c.grpcListen)) {
      ctx.addIssue({
        code: 'custom',
        path: ['grpcListen'],
        message: `${c.grpcListen} is not a loopback address: set grpcTls (certFile, keyFile) or, on a trusted network, grpcInsecure = true`,
      });
    }
  });

/** Whether `HOST:PORT` binds only loopback (127.0.0.0/8, ::1, localhost). */
export function isLoopbackListen(listen: string): boolean {
  const host = listen.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

export type RunnerConfig = Readonly<Omit<z.infer<typeof RunnerConfigSchema>, 'machinesFiles'>> & {
  readonly stateDir: string;
  readonly machinesFiles: readonly string[];
  /** Upstream keys this configuration sets that Hydrant does not act on (warned about at start). */
  readonly withoutEffect: readonly string[];
};


/** The flag that sets each key (on serve; the database ones on every command that opens the database). */
export const RUNNER_FLAGS: Readonly<Record<string, string>> = Object.freeze({
  dbUrl: '--db-url',
  stateDir: '--state-dir',
  httpListen: '--http-listen',
  grpcListen: '--grpc-listen',
  standby: '--standby',
});

/**
 * Other spellings accepted for a key: `tokenPaths` is the upstream queue
 * runner's name, `tokenFiles` agrees with the builder's `tokenFile` (and the
 * TLS keys' certFile/keyFile).
 */
const RUNNER_ALIASES: Readonly<Record<string, string>> = Object.freeze({ tokenFiles: 'tokenPaths', apiTokenFiles: 'apiTokenPaths' });

/** Validates a plain object (e.g. parsed TOML plus overrides) into a frozen config. */
export function validateRunnerConfig(input: unknown, source = NO_FILE, env: NodeJS.ProcessEnv = process.env): RunnerConfig {
  const parsed = RunnerConfigSchema.safeParse(applyAliases((input ?? {}) as Record<string, unknown>, RUNNER_ALIASES, source));
  if (!parsed.success) throw new ConfigError(formatIssues(parsed.error, source, RUNNER_FLAGS));
  const c = parsed.data;
  // The environment wins over the file, as upstream does for the database URL.
  const dbUrl = env.HYDRA_DATABASE_URL || c.dbUrl;
  if (dbUrl) {
    const wrong = checkDbUrl(dbUrl);
    const from = env.HYDRA_DATABASE_URL ? 'HYDRA_DATABASE_URL' : `${source === NO_FILE ? '' : `${source}: `}dbUrl (--db-url)`;
    if (wrong) throw new ConfigError(`${from}: not a PostgreSQL URL (${wrong}); expected ${DB_URL_FORM}`);
  }
  return Object.freeze({
    ...c,
    dbUrl,
    stateDir: c.stateDir ?? `${c.hydraDataDir}/hydrant`,
    remoteStoreAddr: Object.freeze([...c.remoteStoreAddr]) as string[],
    tokenPaths: Object.freeze([...c.tokenPaths]) as string[],
    machinesFiles: Object.freeze([...(c.machinesFiles ?? defaultMachinesFiles(env))]) as string[],
    apiTokenPaths: Object.freeze([...c.apiTokenPaths]) as string[],
    jobsetRepeats: Object.freeze([...c.jobsetRepeats]) as string[],
    grpcTls: c.grpcTls ? Object.freeze({ ...c.grpcTls }) : undefined,
    withoutEffect: Object.freeze(Object.keys(UPSTREAM_WITHOUT_EFFECT).filter((k) => input !== null && typeof input === 'object' && k in input)),
  });
}

/** Reads and validates a TOML file; one ConfigError names every problem. */
export function loadRunnerConfig(path: string | undefined, overrides: Record<string, unknown> = {}, env = process.env): RunnerConfig {
  return validateRunnerConfig(readTomlWithOverrides(path, overrides), path ?? NO_FILE, env);
}

/** Renders a database URL for logs without its password. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}
