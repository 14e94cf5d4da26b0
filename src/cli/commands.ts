import { HYDRA_SCHEMA_VERSION } from '../db/required-schema.ts';
import { DB_OPTIONS, DB_OPTIONS_HELP, NAMED_DB_OPTIONS, NAMED_DB_OPTIONS_HELP, type Command } from './command.ts';

/*
 * Every `hydrant` command's help and options. A command's code
 * (src/cli/commands/<name>.ts, with the runner, gRPC, the S3 SDK, pg, ...)
 * is imported by `load` only when that command runs: `hydrant --help`, a
 * command's --help or a mistyped flag loads none of it.
 */

const serve: Command = {
  name: 'serve',
  summary: 'run the queue runner daemon',
  usage: 'hydrant serve [--config FILE] [--db-url URL] [--state-dir DIR] [--http-listen HOST:PORT] [--grpc-listen HOST:PORT] [--standby]',
  help: `Runs the queue runner on a Hydra database: checks the schema (creating it on
an empty database), listens for queued builds, and runs until SIGTERM or
SIGINT (graceful drain). SIGHUP reloads the configuration file. It rides out
a database outage (dbGiveUpAfterInS) and exits non-zero when it gives up or
another runner took its lock. Flags win over the configuration file.
${DB_OPTIONS_HELP}
      --http-listen A   status API, /metrics and visualizer address, HOST:PORT,
                        or '' for none (httpListen; default 127.0.0.1:8080)
      --grpc-listen A   builder protocol address, HOST:PORT (grpcListen;
                        default 127.0.0.1:50051)
      --standby         when another runner holds the database, wait as a hot
                        standby and take over when it dies (config: standby)`,
  options: {
    ...DB_OPTIONS,
    standby: { type: 'boolean' },
    'http-listen': { type: 'string' },
    'grpc-listen': { type: 'string' },
  },
  load: () => import('./commands/serve.ts'),
};

const submit: Command = {
  name: 'submit',
  summary: 'queue builds: evaluate a Nix file, or take .drv paths',
  usage: 'hydrant submit --project P --jobset J [--create] (--file FILE [--attr A]... | DRV...)',
  help: `Queues builds in a project/jobset as Hydra's evaluator does: Builds and
BuildOutputs rows, an evaluation (JobsetEvals) with its members, and a
NOTIFY builds_added for the runner. A job whose derivation is already queued
or built in the jobset is not queued again. The report (one line per queued
build, after a first line naming the database) is printed after the commit;
if stdout is closed early (\`| head\`) the rest is dropped quietly and the
exit code stays 0.

A jobset made by --create is one Hydra's evaluator leaves alone: disabled
(enabled = 0), checkinterval 0, no inputs; its builds are still queued and
built (docs/OPERATIONS.md).

      --project P      project name
      --jobset J       jobset name
      --create         create the project and jobset if they do not exist
      --file FILE      a Nix file: every top-level derivation attribute (a
                       function is called with {}) becomes a job, with Hydra's
                       meta attributes (schedulingPriority, timeout, maxSilent, ...)
      --attr A         only these attributes of --file (repeatable)
      DRV...           .drv paths to queue instead; the job name is the
                       derivation's name
${NAMED_DB_OPTIONS_HELP}`,
  options: {
    ...NAMED_DB_OPTIONS,
    project: { type: 'string' },
    jobset: { type: 'string' },
    create: { type: 'boolean' },
    file: { type: 'string' },
    attr: { type: 'string', multiple: true },
  },
  load: () => import('./commands/submit.ts'),
};

const db: Command = {
  name: 'db',
  summary: 'check, create or compare the Hydra database schema',
  usage: 'hydrant db check|init|compare [options]',
  help: `  check     verify that every table and column Hydrant needs exists; changes
            nothing. Exit 1 with one line naming what is missing.
  init      create Hydra's schema (version ${HYDRA_SCHEMA_VERSION}) on an empty database, or check
            an existing one (never altered)
  compare --hydra-sql FILE
            load Hydra's own hydra.sql into one scratch database and Hydrant's
            migration into another on the same server, and print every
            difference in tables, columns, constraints, indexes, triggers,
            functions and rules. Exit 1 when they differ.

The first line of output names the database used.
${NAMED_DB_OPTIONS_HELP}`,
  options: { ...NAMED_DB_OPTIONS, 'hydra-sql': { type: 'string' } },
  load: () => import('./commands/db.ts'),
};

const builder: Command = {
  name: 'builder',
  summary: 'run a build machine that dials in to a runner over gRPC',
  usage: 'hydrant builder --server HOST:PORT --token-file F [--tls-ca FILE [--cert FILE --key FILE]] [--config builder.toml] [--max-jobs N] [--systems S,...] [--features F,...] [--store-dir DIR] [--machine-id ID]',
  help: `Connects to a Hydrant runner, joins as a build machine and builds the
steps it is ordered: inputs are fetched from the runner (NARs checked against
their hashes before import), the build runs with the step's limits and its
log streams live, and outputs are streamed back as NARs. A lost connection is
re-dialled with capped exponential backoff under the same machine id, and
running builds carry on. SIGTERM/SIGINT: stop taking jobs, let running ones
finish (up to shutdownGraceInS), then exit 0. A refused token or client
certificate, or a runner certificate that fails verification, is fatal: one
error line naming the file to fix, exit 1.

      --server HOST:PORT   the runner's gRPC address (config key server)
      --token-file F       file holding the bearer token, one of the runner's
                           tokenPaths (tokenFile; tokenPath is accepted too)
      --tls-ca FILE        dial with TLS, trusting only this CA for the
                           runner's certificate (tlsCaFile)
      --cert FILE          client certificate for mutual TLS (certFile)
      --key FILE           its private key, mode 600 (keyFile)
  -c, --config FILE        builder configuration (TOML, camelCase keys:
                           server, tokenFile, tlsCaFile, certFile, keyFile,
                           machineId, systems,
                           supportedFeatures, mandatoryFeatures, maxJobs,
                           speedFactor, thresholds, storeDir, buildDir,
                           reconnectMinMs, reconnectMaxMs, shutdownGraceInS)
      --store-dir DIR      build in a private Nix store under DIR (its own
                           mount namespace) instead of the host store
      --machine-id ID      stable machine id (default: the hostname)
      --max-jobs N         jobs at once (maxJobs; default this machine's cores,
                           as Nix's max-jobs = auto)
      --systems S,...      systems it builds for (systems; default this host's
                           system and builtin); repeatable or comma-separated
      --features F,...     supported system features (supportedFeatures;
                           default ca-derivations); repeatable or comma-separated
      --mandatory-features F,...
                           features a step must ask for to run here
                           (mandatoryFeatures)`,
  options: {
    config: { type: 'string', short: 'c' },
    server: { type: 'string' },
    'token-file': { type: 'string' },
    'tls-ca': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'store-dir': { type: 'string' },
    'machine-id': { type: 'string' },
    'max-jobs': { type: 'string' },
    systems: { type: 'string', multiple: true },
    features: { type: 'string', multiple: true },
    'mandatory-features': { type: 'string', multiple: true },
  },
  load: () => import('./commands/builder.ts'),
};

const demo: Command = {
  name: 'demo',
  summary: 'run a runner, two builders and a bundled jobset, and show how it goes',
  usage: 'hydrant demo [--state-dir DIR] [--exit-when-done] [--http-listen 127.0.0.1:N] [--provision] [--verbose]',
  help: `Starts the runner on an embedded PostgreSQL, two builder agents (each with
its own Nix store when run as root: a private /nix in a mount namespace),
queues a bundled jobset as project demo, jobset main (a dozen derivations
with shared dependencies, several outputs, one that fails, one that depends
on it, one with Hydra build products), shows progress as builds end (a
progress bar on a terminal, plain lines otherwise) and prints a summary:
builds by status, steps per machine, time, and the binary cache the runner
published the outputs to (signed with the demo's key). Then it keeps
running until SIGINT/SIGTERM, unless --exit-when-done.

      --state-dir DIR     where the demo keeps its database (postgres/), the
                          binary cache (cache/), its signing keys (keys/),
                          build logs (hydra/), the builders' stores
                          (builders/) and the runner log (demo.log);
                          default ./state. A later run with the same
                          directory finds its builds already done.
      --exit-when-done    exit once every build has ended: 0 if each ended
                          as expected, 1 otherwise (naming what differed)
      --http-listen A     serve the visualizer (http://127.0.0.1:N/) and the
                          status API (/status) on A = 127.0.0.1:N (as serve's
                          --http-listen; the demo listens on loopback only)
      --http-port N       the same as --http-listen 127.0.0.1:N
      --provision         start with no builders: hydrant provision's loop
                          (local backend) starts up to two as the jobset
                          needs them and destroys them once idle 5 s
      --verbose           runner and builder logs on stderr instead of files`,
  options: {
    'state-dir': { type: 'string' },
    'exit-when-done': { type: 'boolean' },
    'http-port': { type: 'string' },
    'http-listen': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    provision: { type: 'boolean' },
  },
  load: () => import('./commands/demo.ts'),
};

const status: Command = {
  name: 'status',
  summary: "print a running runner's status as hydra-queue-runner --status does",
  usage: 'hydrant status [--config FILE | --url URL]',
  help: `Prints the JSON document \`hydra-queue-runner --status\` prints, read from a
running runner's HTTP API (GET /status/provisioner): status, uptime,
machines (by name: enabled, systemTypes, currentJobs, idleSince,
nrStepsDone, disabledUntil, lastFailure, consecutiveFailures, ...) and
machineTypes (by system type: runnable, running, waitTime, lastActive).
hydra-provisioner's statusCommand can be \`["hydrant", "status"]\`. A runner
that does not answer, or has no scheduler running, is {"status":"down"}
(exit code 0, as Hydra's).

  -c, --config FILE   runner configuration: its httpListen is asked
      --url URL       the runner's HTTP API instead (e.g. http://127.0.0.1:8080)`,
  options: {
    config: { type: 'string', short: 'c' },
    url: { type: 'string' },
  },
  load: () => import('./commands/status.ts'),
};

const provision: Command = {
  name: 'provision',
  summary: 'create and stop build machines as the queue needs them (hydra-provisioner)',
  usage: 'hydrant provision --config FILE [--once] [--state-dir DIR]',
  help: `Reads the runner's queue (its HTTP status API, statusUrl, or a
statusCommand printing the hydra-queue-runner --status JSON) and, per
[systemTypes."<system>[:features]"], keeps
ceil((runnable - ignoredRunnables) / runnablesPerMachine) machines, clamped
to [minMachines, maxMachines]: created through the backend (local: hydrant
builder agents with private stores on this host; command: your create,
start, stop, destroy and list commands), at most maxCreatesPerPass a pass,
and stopped (stopOnIdle) or destroyed once idle for gracePeriod seconds.
SSH machines are written to a Hydra machines file (machinesFile or
updateCommand). Each machine's state is saved in the state directory, so a
restarted provisioner adopts what exists. docs/PROVISIONER.md has the keys.

  -c, --config FILE     provisioner configuration (TOML)
      --once            one pass, then exit (its report on stdout)
      --state-dir DIR   where machine snapshots live (config key stateDir)`,
  options: {
    config: { type: 'string', short: 'c' },
    once: { type: 'boolean' },
    'state-dir': { type: 'string' },
  },
  load: () => import('./commands/provision.ts'),
};

const cacheGc: Command = {
  name: 'cache',
  summary: 'delete from a binary cache what no GC root keeps alive (cache gc)',
  usage: 'hydrant cache gc --store URI [--roots-dir DIR] [--prefix P/] [--min-age 1h] [--dry-run]',
  help: `  gc    delete every narinfo, NAR, .ls listing, log and realisation under the
        cache's prefix that belongs to no live path, and abort uploads in parts
        left unfinished for longer than --min-age. Live paths are the closure of
        the roots (one entry per store path basename in the GC roots directory,
        as \`hydrant gc-roots\` and Hydra keep it), followed through the cache's
        own narinfos. Logs live while their derivation is a root or the deriver
        of a live path. nix-cache-info, objects outside the prefix and objects
        of no known kind are kept. Prints what it kept, deleted and freed.

      --store URI       the cache: file:///dir or s3://bucket?… (Nix's parameters)
      --roots-dir DIR   GC roots directory (default: the config's rootsDir, else
                        /nix/var/nix/gcroots/per-user/$USER/hydra-roots)
      --prefix P/       the cache's key prefix inside the bucket or directory
                        (empty, or ending in /)
      --min-age D       never delete an object younger than D (default 1h; 30m,
                        2d, or seconds), so concurrent uploads are safe
      --dry-run         list what would be deleted; delete nothing
      --no-local-store  do not follow roots the cache lacks through the local
                        Nix store (by default their local closure is live too)
  -c, --config FILE     runner configuration (rootsDir, awsCredentialsFile)`,
  options: {
    config: { type: 'string', short: 'c' },
    store: { type: 'string' },
    'roots-dir': { type: 'string' },
    prefix: { type: 'string' },
    'min-age': { type: 'string' },
    'dry-run': { type: 'boolean' },
    'no-local-store': { type: 'boolean' },
  },
  load: () => import('./commands/cache-gc.ts'),
};

const gcRoots: Command = {
  name: 'gc-roots',
  summary: "keep the GC roots directory as Hydra's hydra-update-gc-roots does",
  usage: 'hydrant gc-roots [--roots-dir DIR] [--dry-run] [options]',
  help: `Makes a root (an empty file named by the store path's basename) for the
outputs of every build Hydra keeps and the derivations of its unfinished and
failed ones: unfinished builds, builds marked keep, the builds of each
jobset's unfinished evaluations and newest keepnr evaluations, and the newest
successful build of each of their jobs. Roots no build keeps are removed
once they are a day old. Running it again changes nothing: safe to run from
a timer (Hydra runs it at 02:15 and 14:15).

      --roots-dir DIR   the directory (default: the config's rootsDir, else
                        /nix/var/nix/gcroots/per-user/$USER/hydra-roots)
      --dry-run         print what would change; change nothing
${NAMED_DB_OPTIONS_HELP}`,
  options: { ...NAMED_DB_OPTIONS, 'roots-dir': { type: 'string' }, 'dry-run': { type: 'boolean' } },
  load: () => import('./commands/gc-roots.ts'),
};

export const COMMANDS: readonly Command[] = [serve, submit, db, builder, demo, status, provision, cacheGc, gcRoots];
