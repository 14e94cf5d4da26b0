import { availableParallelism, hostname, tmpdir } from 'node:os';
import { z } from 'zod';
import { ConfigError } from '../errors/index.ts';
import { hostSystem } from '../nix/host-system.ts';
import { applyAliases, formatIssues, NO_FILE, readTomlWithOverrides } from './toml-file.ts';

/**
 * A builder agent's configuration (`hydrant builder`): TOML with camelCase
 * keys, validated once into a frozen object. Unknown keys are errors.
 */

const ThresholdsSchema = z
  .object({
    maxLoad1PerCpu: z.number().nonnegative().optional(),
    maxCpuPressure: z.number().nonnegative().optional(),
    maxMemPressure: z.number().nonnegative().optional(),
    maxIoPressure: z.number().nonnegative().optional(),
    minFreeDiskPercent: z.number().min(0).max(100).optional(),
  })
  .strict();

const BuilderConfigSchema = z
  .object({
    /** The runner's gRPC address, HOST:PORT. */
    server: z.string().regex(/^.+:\d+$/, 'must be HOST:PORT'),
    /** File holding the bearer token (surrounding whitespace ignored); `tokenPath` is accepted too. */
    tokenFile: z.string().min(1),
    /** TLS: the CA that signed the runner's certificate (only it is trusted); without it the channel is plain. */
    tlsCaFile: z.string().min(1).optional(),
    /** Mutual TLS: this builder's certificate and key (both or neither; need tlsCaFile). */
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    /** Stable across restarts; the runner keeps a reconnecting machine's jobs. */
    machineId: z.string().min(1).optional(),
    systems: z.array(z.string().min(1)).min(1).optional(),
    supportedFeatures: z.array(z.string().min(1)).default(['ca-derivations']),
    mandatoryFeatures: z.array(z.string().min(1)).default([]),
    /** Jobs at once; default the machine's cores, as Nix's `max-jobs = auto`. */
    maxJobs: z.number().int().positive().default(() => availableParallelism()),
    speedFactor: z.number().positive().default(1),
    thresholds: ThresholdsSchema.optional(),
    /** A private store directory (its own Nix store); without it the host store is used. */
    storeDir: z.string().min(1).optional(),
    /** Where imports are spooled and free space is measured. */
    buildDir: z.string().min(1).optional(),
    reconnectMinMs: z.number().int().positive().default(500),
    reconnectMaxMs: z.number().int().positive().default(30_000),
    /** On SIGTERM, how long running jobs may take to finish before they are killed. */
    shutdownGraceInS: z.number().nonnegative().default(300),
  })
  .strict()
  .refine((c) => c.reconnectMinMs <= c.reconnectMaxMs, { message: 'reconnectMinMs must not exceed reconnectMaxMs', path: ['reconnectMinMs'] })
  .refine((c) => (c.certFile === undefined) === (c.keyFile === undefined), {
    message: 'certFile (--cert) and keyFile (--key) go together: set both or neither',
    path: ['certFile'],
  })
  .refine((c) => c.certFile === undefined || c.tlsCaFile !== undefined, {
    message: "a client certificate needs TLS: set tlsCaFile (--tls-ca) to the CA that signed the runner's certificate",
    path: ['tlsCaFile'],
  });

type Parsed = z.infer<typeof BuilderConfigSchema>;
export type BuilderConfig = Readonly<
  Omit<Parsed, 'machineId' | 'systems' | 'buildDir' | 'supportedFeatures' | 'mandatoryFeatures'> & {
    machineId: string;
    systems: readonly string[];
    supportedFeatures: readonly string[];
    mandatoryFeatures: readonly string[];
    buildDir: string;
  }
>;


/** The flag that sets each key, so an error can name both. */
export const BUILDER_FLAGS: Readonly<Record<string, string>> = Object.freeze({
  server: '--server',
  tokenFile: '--token-file',
  tlsCaFile: '--tls-ca',
  certFile: '--cert',
  keyFile: '--key',
  storeDir: '--store-dir',
  machineId: '--machine-id',
  maxJobs: '--max-jobs',
  systems: '--systems',
  supportedFeatures: '--features',
});

/**
 * Other spellings accepted for a key: the runner lists its tokens as
 * `tokenPaths`, so a builder may name its one as `tokenPath`.
 */
const BUILDER_ALIASES: Readonly<Record<string, string>> = Object.freeze({ tokenPath: 'tokenFile' });

/** Validates a plain object (parsed TOML plus overrides) into a frozen config. */
export function validateBuilderConfig(input: unknown, source = NO_FILE): BuilderConfig {
  const parsed = BuilderConfigSchema.safeParse(applyAliases((input ?? {}) as Record<string, unknown>, BUILDER_ALIASES, source));
  if (!parsed.success) throw new ConfigError(formatIssues(parsed.error, source, BUILDER_FLAGS));
  const c = parsed.data;
  // Mandatory features are supported features too.
  const supported = [...new Set([...c.supportedFeatures, ...c.mandatoryFeatures])];
  return Object.freeze({
    ...c,
    machineId: c.machineId ?? hostname(),
    systems: Object.freeze([...(c.systems ?? [hostSystem(), 'builtin'])]),
    supportedFeatures: Object.freeze(supported),
    mandatoryFeatures: Object.freeze([...c.mandatoryFeatures]),
    buildDir: c.buildDir ?? tmpdir(),
    thresholds: c.thresholds ? Object.freeze({ ...c.thresholds }) : undefined,
  });
}

/** Reads and validates a TOML file (optional); overrides (CLI flags) win over it. */
export function loadBuilderConfig(path: string | undefined, overrides: Record<string, unknown> = {}): BuilderConfig {
  return validateBuilderConfig(readTomlWithOverrides(path, overrides), path ?? NO_FILE);
}
