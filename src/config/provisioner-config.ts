/**
 * `hydrant provision`'s configuration (docs/PROVISIONER.md): hydra-provisioner's
 * keys (tag, statusCommand, updateCommand, systemTypes.<type>.{minMachines,
 * maxMachines, ignoredRunnables, runnablesPerMachine, maxJobs, speedFactor,
 * sshKey, stopOnIdle, gracePeriod}) in TOML, plus where the runner's status
 * is read, the backend that makes machines, and the state directory.
 * Validated once here; every problem is one line naming the key.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../errors/index.ts';
import { formatIssues, readTomlWithOverrides } from './toml-file.ts';

const SYSTEM = /^[A-Za-z0-9_.-]+$/;
const FEATURE = /^[A-Za-z0-9_.+-]+$/;

/** `x86_64-linux` or `x86_64-linux:kvm,big`: a system and, optionally, features a machine of the type supports and requires. */
export function parseSystemType(type: string): { system: string; features: string[] } | null {
  const colon = type.indexOf(':');
  const system = colon < 0 ? type : type.slice(0, colon);
  const features = colon < 0 ? [] : type.slice(colon + 1).split(',');
  if (!SYSTEM.test(system)) return null;
  if (colon >= 0 && (features.length === 0 || !features.every((f) => FEATURE.test(f)))) return null;
  return { system, features };
}

const argv = z.array(z.string().min(1)).min(1, 'must name a program: ["prog", "arg", ...]');
const nonNegInt = z.number().int().nonnegative();
const posInt = z.number().int().positive();

const systemTypeSchema = z
  .object({
    minMachines: nonNegInt.default(0),
    maxMachines: nonNegInt.default(1),
    ignoredRunnables: nonNegInt.default(0),
    runnablesPerMachine: posInt.default(10),
    maxJobs: posInt.default(1),
    speedFactor: z.number().positive().default(1),
    sshKey: z.string().min(1).default('-'),
    stopOnIdle: z.boolean().default(false),
    /** Seconds an idle machine waits before it is stopped or destroyed. */
    gracePeriod: nonNegInt.default(0),
  })
  .strict()
  .refine((t) => t.minMachines <= t.maxMachines, { message: 'minMachines is greater than maxMachines' });

const localBackend = z
  .object({
    type: z.literal('local'),
    /** The runner's gRPC address, as `hydrant builder --server` takes it. */
    server: z.string().min(1),
    tokenFile: z.string().min(1),
    tlsCaFile: z.string().min(1).optional(),
    /** Each builder in a private store under the state directory (a mount namespace: root); false: the host store. */
    privateStores: z.boolean().default(true),
  })
  .strict();

const commandBackend = z
  .object({
    type: z.literal('command'),
    create: argv,
    destroy: argv,
    list: argv,
    start: argv.optional(),
    stop: argv.optional(),
    /** Seconds one command may take. */
    timeoutS: posInt.default(600),
  })
  .strict();

const schema = z
  .object({
    tag: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, 'letters, digits, - and _ only (it starts machine ids)').default('hydrant-provisioned'),
    statusUrl: z.string().url().optional(),
    statusCommand: argv.optional(),
    stateDir: z.string().min(1),
    /** HOST:PORT for GET /status and /metrics; none by default. */
    httpListen: z.string().regex(/^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'HOST:PORT').optional(),
    /** Seconds between passes. */
    interval: posInt.default(30),
    maxCreatesPerPass: posInt.default(4),
    /** Seconds a created machine has to join before it counts as failed and is destroyed. */
    joinTimeout: posInt.default(300),
    /** Backoff after a failed create, start, stop or destroy: min doubling up to max (seconds). */
    retryMin: posInt.default(5),
    retryMax: posInt.default(300),
    /** Where the machines file of SSH machines is written (atomically), or a command that gets it on stdin. */
    machinesFile: z.string().min(1).optional(),
    updateCommand: argv.optional(),
    backend: z.discriminatedUnion('type', [localBackend, commandBackend]),
    systemTypes: z.record(z.string(), systemTypeSchema),
  })
  .strict()
  .refine((c) => (c.statusUrl === undefined) !== (c.statusCommand === undefined), { message: 'set exactly one of statusUrl and statusCommand', path: ['statusUrl'] })
  .refine((c) => !(c.machinesFile && c.updateCommand), { message: 'set machinesFile or updateCommand, not both', path: ['machinesFile'] })
  .refine((c) => c.retryMin <= c.retryMax, { message: 'retryMin is greater than retryMax', path: ['retryMin'] });

export type SystemTypeConfig = z.infer<typeof systemTypeSchema> & { readonly system: string; readonly features: readonly string[] };
export type LocalBackendConfig = z.infer<typeof localBackend>;
export type CommandBackendConfig = z.infer<typeof commandBackend>;
export type ProvisionerConfig = Omit<z.infer<typeof schema>, 'systemTypes'> & { readonly systemTypes: Readonly<Record<string, SystemTypeConfig>> };

const FLAGS = { stateDir: '--state-dir' };

/** Reads and validates the file (and flags); a problem is one ConfigError line naming the key. */
export function loadProvisionerConfig(file: string, overrides: Record<string, unknown> = {}): ProvisionerConfig {
  return parseProvisionerConfig(readTomlWithOverrides(file, overrides), file);
}

export function parseProvisionerConfig(data: Record<string, unknown>, source: string): ProvisionerConfig {
  const r = schema.safeParse(data);
  if (!r.success) throw new ConfigError(formatIssues(r.error, source, FLAGS).replaceAll('docs/OPERATIONS.md', 'docs/PROVISIONER.md'));
  const c = r.data;
  const types: Record<string, SystemTypeConfig> = {};
  for (const [type, t] of Object.entries(c.systemTypes)) {
    const parsed = parseSystemType(type);
    if (!parsed) throw new ConfigError(`${source}: systemTypes.${JSON.stringify(type)}: not a system type (x86_64-linux, or x86_64-linux:feature,...)`);
    types[type] = Object.freeze({ ...t, ...parsed });
  }
  if (Object.keys(types).length === 0) throw new ConfigError(`${source}: systemTypes: none configured: add [systemTypes."x86_64-linux"]`);
  if (c.backend.type === 'command' && Object.values(types).some((t) => t.stopOnIdle) && !(c.backend.start && c.backend.stop)) {
    throw new ConfigError(`${source}: backend: stopOnIdle needs the command backend's start and stop commands`);
  }
  // Builders and commands may run elsewhere than here: paths are made absolute once.
  const backend =
    c.backend.type === 'local'
      ? { ...c.backend, tokenFile: resolve(c.backend.tokenFile), ...(c.backend.tlsCaFile !== undefined && { tlsCaFile: resolve(c.backend.tlsCaFile) }) }
      : c.backend;
  const machinesFile = c.machinesFile !== undefined ? resolve(c.machinesFile) : undefined;
  return Object.freeze({ ...c, stateDir: resolve(c.stateDir), backend, ...(machinesFile !== undefined && { machinesFile }), systemTypes: Object.freeze(types) });
}
