/**
 * End-to-end benchmark: one DAG of trivial derivations built twice, once by
 * plain `nix-store --realise` on the host store and once by Hydrant (a
 * `hydrant serve` runner with two `hydrant builder` agents, each with its own
 * private store, and a signed directory cache). Prints one JSON object.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { hydrantArgv } from '../src/util/hydrant-bin.ts';
import { submitJobs, type SubmitJob } from '../src/db/submit.ts';
import { JOB_DEFAULTS } from '../src/eval/job-defaults.ts';
import { LocalNixStore } from '../src/nix/local-store.ts';
import { runNix, runNixLines } from '../src/nix/tools.ts';
import { runnerToml } from '../test/helpers/fleet.ts';
import { prng } from '../test/sim/synthetic-dag.ts';
import { startSshdServe, type SshdServe } from '../test/helpers/sshd-serve.ts';
import { benchOptions, log, round } from './common.ts';

export const describe = 'build one DAG of trivial derivations with plain nix-store --realise and with Hydrant (runner + 2 builders + cache)';


// ---- the DAG ----------------------------------------------------------------

export interface Dag {
  /** deps[i]: indices (all < i, in earlier layers) derivation i depends on. */
  deps: number[][];
  layers: number;
  edges: number;
}

/**
 * N derivations in `layers` layers of equal width; each one outside the first
 * layer depends on 0–maxDeps derivations of earlier layers (half of the picks
 * from the layer right before, so chains run through every layer).
 */
export function layeredDag(n: number, layers: number, maxDeps: number, seed: number): Dag {
  const rand = prng(seed);
  const width = Math.ceil(n / layers);
  const deps: number[][] = [];
  let edges = 0;
  for (let i = 0; i < n; i++) {
    const layer = Math.floor(i / width);
    if (layer === 0) {
      deps.push([]);
      continue;
    }
    const k = Math.floor(rand() * (maxDeps + 1));
    const prevStart = (layer - 1) * width;
    const picks = new Set<number>();
    for (let j = 0; j < k; j++) {
      const d = rand() < 0.5 ? prevStart + Math.floor(rand() * width) : Math.floor(rand() * layer * width);
      picks.add(Math.min(d, layer * width - 1));
    }
    const list = [...picks].sort((a, b) => a - b);
    edges += list.length;
    deps.push(list);
  }
  return { deps, layers: Math.ceil(n / width), edges };
}

/**
 * The Nix expression: a top-level list, one trivial derivation per element
 * (builder /bin/sh; the output names the nonce and its dependencies' outputs,
 * so outputs refer to their inputs as real packages do).
 */
export function dagExpression(dag: Dag, nonce: string): string {
  const lines = ['let', '  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };'];
  dag.deps.forEach((ds, i) => {
    const refs = ds.map((d) => ` \${d${d}}`).join('');
    lines.push(`  d${i} = mk "e2e-${nonce}-${i}" "echo ${i} ${nonce}${refs} > $out";`);
  });
  lines.push('in [');
  for (let i = 0; i < dag.deps.length; i++) lines.push(`  d${i}`);
  lines.push(']');
  return `${lines.join('\n')}\n`;
}

async function instantiateDag(dir: string, dag: Dag, nonce: string): Promise<{ drvs: string[]; seconds: number }> {
  const file = join(dir, `dag-${nonce}.nix`);
  writeFileSync(file, dagExpression(dag, nonce));
  const t0 = performance.now();
  const drvs = await runNixLines('nix-instantiate', [file]);
  const seconds = (performance.now() - t0) / 1000;
  if (drvs.length !== dag.deps.length) throw new Error(`nix-instantiate printed ${drvs.length} paths for ${dag.deps.length} derivations`);
  return { drvs, seconds };
}

// ---- processes ------------------------------------------------------------------

const CLK_TCK = 100;

/** utime + stime and cutime + cstime of one process, in seconds (/proc/PID/stat). */
function procStat(pid: number): { ppid: number; self: number; children: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields 4 and 14–17 of stat(5) are at 1 and 11–14 once the pid and (command) are cut off.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    return { ppid: f[1]!, self: (f[11]! + f[12]!) / CLK_TCK, children: (f[13]! + f[14]!) / CLK_TCK };
  } catch {
    return null;
  }
}

/**
 * CPU seconds of a process itself (`self`: for Node, every thread) and of
 * its descendants (`children`): those it has waited for plus those still
 * running (long-lived Nix processes count while they run).
 */
function cpuOf(pid: number | undefined): { self: number; children: number } {
  if (pid === undefined) return { self: 0, children: 0 };
  const all = new Map<number, { ppid: number; self: number; children: number }>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const st = procStat(Number(e));
    if (st) all.set(Number(e), st);
  }
  const root = all.get(pid);
  if (!root) return { self: 0, children: 0 };
  let children = root.children;
  const stack = [pid];
  while (stack.length > 0) {
    const parent = stack.pop()!;
    for (const [p, st] of all) {
      if (st.ppid !== parent) continue;
      children += st.self + st.children;
      stack.push(p);
    }
  }
  return { self: root.self, children };
}

/**
 * CPU seconds of a process's threads by thread name (user, system), from
 * /proc/PID/task/TID/stat: Node's main thread is `node`, libuv's file-system
 * pool `libuv-worker`, V8's helpers (GC, compiler) `V8 DefaultWorke`,
 * piscina's workers `node` too, and so on; same-named threads are summed.
 */
function threadCpu(pid: number | undefined): Record<string, { user: number; sys: number }> {
  const out: Record<string, { user: number; sys: number }> = {};
  if (pid === undefined) return out;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = tid === String(pid) ? 'main' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
      const t = (out[name] ??= { user: 0, sys: 0 });
      t.user += f[11]! / CLK_TCK;
      t.sys += f[12]! / CLK_TCK;
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

function threadCpuDelta(
  before: Record<string, { user: number; sys: number }>,
  after: Record<string, { user: number; sys: number }>,
): Record<string, { user: number; sys: number }> {
  return Object.fromEntries(
    Object.entries(after)
      .map(([k, a]) => [k, { user: round(a.user - (before[k]?.user ?? 0), 2), sys: round(a.sys - (before[k]?.sys ?? 0), 2) }] as const)
      .filter(([, d]) => d.user + d.sys > 0),
  );
}

interface Proc {
  name: string;
  child: ChildProcess;
  output(): string;
  waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray>;
  exited: Promise<void>;
}

/** Starts `hydrant ...args`; stdout and stderr go to `<dir>/<name>.log` and are kept for waitFor. */
function startHydrant(dir: string, name: string, args: string[], nodeArgs: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, hydrantArgv(args, nodeArgs), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const file = createWriteStream(join(dir, `${name}.log`));
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (b: Buffer): void => {
    file.write(b);
    // Only the head of the output is searched (joins, ports); the log file has the rest.
    if (out.length < 1 << 20) out += b.toString();
    for (const l of listeners) l();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<void>((r) => child.on('close', () => {
    file.end();
    r();
  }));
  return {
    name,
    child,
    output: () => out,
    exited,
    waitFor(re, ms) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = out.match(re);
          if (m) {
            listeners.delete(check);
            clearTimeout(t);
            resolve(m);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            listeners.delete(check);
            clearTimeout(t);
            reject(new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before ${re}:\n${out.slice(-2000)}`));
          }
        };
        const t = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`${name}: timed out waiting for ${re}:\n${out.slice(-2000)}`));
        }, ms);
        listeners.add(check);
        child.once('close', check);
        check();
      });
    },
  };
}

async function stopAll(procs: Proc[]): Promise<void> {
  const running = procs.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
  for (const p of running) p.child.kill('SIGTERM');
  const timeout = new Promise<void>((r) => setTimeout(r, 10_000).unref());
  await Promise.race([Promise.all(running.map((p) => p.exited)), timeout]);
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await Promise.race([Promise.all(running.map((p) => p.exited)), new Promise<void>((r) => setTimeout(r, 5_000).unref())]);
}

// ---- counting the runner's system calls ---------------------------------------------

interface SyscallCount {
  stop(): Promise<{ total: number; errors: number; bySyscall: Record<string, { calls: number; errors: number }> }>;
}

/**
 * `strace -c` attached to every thread of `pid` (main thread, libuv's pool,
 * workers; not the tools it runs, which `runnerTools` counts as CPU), from
 * now until stop(). Tracing slows every call, so a run's times and CPU are
 * not comparable with an untraced run's; the counts are what it is for.
 */
async function countSyscalls(pid: number, file: string): Promise<SyscallCount> {
  const tids = readdirSync(`/proc/${pid}/task`);
  const child = spawn('strace', ['-c', '-o', file, ...tids.flatMap((t) => ['-p', t])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (b: Buffer) => {
      err += b.toString();
      if ((err.match(/attached/g) ?? []).length >= tids.length) resolve();
    });
    void exited.then((code) => reject(new Error(`strace exited (${code}) before attaching: ${err}`)));
  });
  return {
    async stop() {
      child.kill('SIGINT');
      await exited;
      const bySyscall: Record<string, { calls: number; errors: number }> = {};
      let total = 0;
      let errors = 0;
      // `% time  seconds  usecs/call  calls  errors  syscall`, errors blank when none.
      for (const line of readFileSync(file, 'utf8').split('\n')) {
        const f = line.trim().split(/\s+/);
        if (f.length < 5 || !/^\d+\.\d+$/.test(f[0]!) || f[f.length - 1] === 'total') continue;
        const name = f[f.length - 1]!;
        const calls = Number(f[3]);
        const errs = f.length >= 6 ? Number(f[4]) : 0;
        bySyscall[name] = { calls, errors: errs };
        total += calls;
        errors += errs;
      }
      return { total, errors, bySyscall };
    },
  };
}

// ---- tracing the tools the runner and builders run ---------------------------------

const TRACED_TOOLS = ['nix-store', 'nix', 'bzip2', 'zstd', 'xz'];

/**
 * A directory of wrapper scripts, put first on the PATH of the runner and the
 * builders, that log every Nix and compression command (start, wall ms,
 * parent pid, command, first argument) to `log`. The wrapper's own fork
 * inflates each time by a few ms; the counts are exact.
 */
function writeToolTracer(dir: string, log: string): string {
  const bin = join(dir, 'trace-bin');
  mkdirSync(bin);
  for (const tool of TRACED_TOOLS) {
    const real = (process.env.PATH ?? '').split(':').map((d) => join(d, tool)).find((f) => existsSync(f));
    if (!real) continue;
    writeFileSync(
      join(bin, tool),
      `#!/bin/bash\ns=$(date +%s%N)\n${real} "$@"\nrc=$?\ne=$(date +%s%N)\necho "$PPID $(( (e-s)/1000000 )) ${tool} $1" >> ${log}\nexit $rc\n`,
      { mode: 0o755 },
    );
  }
  return bin;
}

/** Runner and builders (together): command (tool + first argument) → calls per step and total wall ms. */
function toolTrace(log: string, names: ReadonlyMap<number, string>, steps: number): Record<string, Record<string, { perStep: number; ms: number }>> {
  const out: Record<string, Record<string, { perStep: number; ms: number }>> = {};
  if (!existsSync(log)) return out;
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const [ppid, ms, tool, arg] = line.split(' ');
    if (!tool) continue;
    const who = names.get(Number(ppid)) ?? 'other';
    const cmd = arg?.startsWith('-') ? `${tool} ${arg}` : tool;
    const e = ((out[who] ??= {})[cmd] ??= { perStep: 0, ms: 0 });
    e.perStep++;
    e.ms += Number(ms);
  }
  for (const cmds of Object.values(out)) for (const e of Object.values(cmds)) e.perStep = round(e.perStep / steps, 2);
  return out;
}

// ---- breakdown from the logs and rows ---------------------------------------------------

function stats(xs: number[]): { mean: number; p50: number; p90: number; max: number } {
  if (xs.length === 0) return { mean: 0, p50: 0, p90: 0, max: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return { mean: round(s.reduce((a, b) => a + b, 0) / s.length, 1), p50: round(at(0.5), 1), p90: round(at(0.9), 1), max: round(s[s.length - 1]!, 1) };
}

/** Per-step upload times the runner logged ("outputs uploaded", ms). */
function uploadTimes(runnerLog: string): number[] {
  const ms: number[] = [];
  for (const line of runnerLog.split('\n')) {
    if (!line.includes('"outputs uploaded"')) continue;
    const m = /"ms":(\d+)/.exec(line);
    if (m) ms.push(Number(m[1]));
  }
  return ms;
}

// ---- the SSH phase --------------------------------------------------------------------

interface SshPhase {
  dir: string;
  pool: ReturnType<typeof createPool>;
  dbUrl: string;
  dag: Dag;
  machines: number;
  maxJobs: number;
  tokenFile: string;
  cacheDir: string;
  secretKey: string;
  timeoutMs: number;
  procs: Proc[];
  env: NodeJS.ProcessEnv;
  nodeArgs: string[];
}

/**
 * The same DAG under fresh names through `machines` SSH machines (real sshd,
 * each with its private store, `nix-store --serve --write` as the forced
 * command) and a runner with no gRPC builder, into the same cache.
 */
async function sshPhase(o: SshPhase): Promise<Record<string, unknown>> {
  const n = o.dag.deps.length;
  const servers: SshdServe[] = [];
  try {
    for (let i = 0; i < o.machines; i++) servers.push(await startSshdServe());
    const nonce = randomBytes(4).toString('hex');
    const inst = await instantiateDag(o.dir, o.dag, nonce);
    log(`ssh: instantiated ${inst.drvs.length} derivations in ${round(inst.seconds, 2)} s; ${o.machines} SSH machines × ${o.maxJobs} jobs`);
    const local = new LocalNixStore();
    const jobs: SubmitJob[] = await Promise.all(
      inst.drvs.map(async (drvPath, i) => {
        const d = await local.readDerivation(drvPath);
        return {
          job: `d${i}`, drvPath, nixName: `e2e-ssh-${nonce}-${i}`, system: d.system, description: null, license: null, homepage: null,
          maintainers: null, priority: JOB_DEFAULTS.priority, timeout: JOB_DEFAULTS.timeout, maxSilent: JOB_DEFAULTS.maxSilent,
          isChannel: false, outputs: d.outputs,
        };
      }),
    );
    const machinesFile = join(o.dir, 'machines');
    writeFileSync(machinesFile, servers.map((s) => s.line({ maxJobs: o.maxJobs })).join('\n') + '\n');
    const config = join(o.dir, 'runner-ssh.toml');
    writeFileSync(
      config,
      runnerToml(
        { dbUrl: o.dbUrl, hydraDataDir: join(o.dir, 'hydra'), tokenFile: o.tokenFile, rootsDir: join(o.dir, 'roots') },
        `remoteStoreAddr = ["file://${o.cacheDir}?compression=zstd&secret-key=${o.secretKey}"]\nmachinesFiles = ["${machinesFile}"]`,
      ),
    );
    const runner = startHydrant(o.dir, 'runner-ssh', ['serve', '--config', config], o.nodeArgs, o.env);
    o.procs.push(runner);
    await runner.waitFor(/"msg":"runner running"/, 120_000);
    const cpu0 = cpuOf(process.pid).children;
    const t0 = performance.now();
    const submitted = await submitJobs(o.pool, { project: 'bench', jobset: 'e2e-ssh', create: true, jobs, now: Math.floor(Date.now() / 1000), evalSeconds: 0, source: 'bench e2e --ssh' });
    if (submitted.added.length !== n) throw new Error(`ssh: queued ${submitted.added.length} builds, expected ${n}`);
    let left = n;
    let lastReport = performance.now();
    while (left > 0) {
      await new Promise((r) => setTimeout(r, 50));
      left = (await o.pool.query<{ n: number }>('select count(*)::int n from builds where finished = 0')).rows[0]!.n;
      const now = performance.now();
      if (now - lastReport > 5000) {
        lastReport = now;
        log(`ssh: ${n - left}/${n} builds finished after ${round((now - t0) / 1000, 1)} s`);
      }
      if (now - t0 > o.timeoutMs) throw new Error(`ssh: ${left} of ${n} builds still queued after ${o.timeoutMs / 1000} s (logs in ${o.dir})`);
      if (runner.child.exitCode !== null || runner.child.signalCode !== null) throw new Error(`runner-ssh exited:\n${runner.output().slice(-2000)}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpuSeconds = cpuOf(process.pid).children - cpu0;
    log(`ssh: ${round(seconds, 2)} s (${round(n / seconds, 1)} drvs/s)`);
    const statuses = await o.pool.query<{ buildstatus: number; n: number }>(
      "select b.buildstatus, count(*)::int n from builds b join jobsets j on j.id = b.jobset_id where j.name = 'e2e-ssh' group by b.buildstatus",
    );
    if (statuses.rows.some((r) => r.buildstatus !== 0)) throw new Error(`ssh: builds did not all succeed: ${JSON.stringify(statuses.rows)} (logs in ${o.dir})`);
    const perMachine = (
      await o.pool.query<{ machine: string; n: number }>(
        "select s.machine, count(*)::int n from buildsteps s join builds b on b.id = s.build join jobsets j on j.id = b.jobset_id where j.name = 'e2e-ssh' and s.status = 0 group by s.machine",
      )
    ).rows;
    return {
      seconds: round(seconds, 2),
      instantiateSeconds: round(inst.seconds, 2),
      stepsPerSecond: round(n / seconds, 1),
      machines: o.machines,
      stepsPerMachine: Object.fromEntries(perMachine.map((r) => [r.machine, r.n])),
      // Runner, its ssh clients and tools, the sshd namespaces' nix-store and builds, PostgreSQL.
      cpuSecondsTotal: round(cpuSeconds, 1),
    };
  } finally {
    await stopAll(o.procs);
    for (const s of servers) await s.stop().catch(() => {});
  }
}

// ---- the benchmark -------------------------------------------------------------------

/** What one repetition measured: plain Nix, then Hydrant, each on the DAG under fresh names. */
interface Rep {
  nix: { seconds: number; instantiateSeconds: number; cpuSeconds: number } | null;
  hydrant: Record<string, unknown> & { seconds: number; cpuSecondsTotal: number; cpuMsPerStepBy: Record<string, number> };
  loadAvg1: [number, number];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, {
    drvs: 500,
    layers: 10,
    'max-deps': 3,
    seed: 1,
    builders: 2,
    'max-jobs': 2,
    /** Repetitions, each plain Nix then Hydrant (one runner and its builders serve them all); medians reported. */
    reps: 1,
    /** Seconds to wait (after `sync`) before each timed run: deleted inodes slow file creation for a while (bench/README.md). */
    'pause-s': 0,
    'timeout-s': 1800,
    'skip-nix': false,
    keep: false,
    /** Write V8 CPU profiles of the runner and builders (every thread) to this directory. */
    'cpu-prof': null,
    /** Count the Nix and compression commands the runner and builders run (see writeToolTracer). */
    'trace-tools': false,
    /** Count the runner's system calls (all its threads) during each rep's Hydrant phase with `strace -c` (slows the run: times are not comparable). */
    'strace-runner': false,
    /** Extra Node flags for the runner and the builders, space-separated (e.g. V8 tuning to compare). */
    'node-args': '',
    /** Then the same DAG (fresh names) through SSH machines (nix-store --serve over real sshd), as many as --builders. */
    ssh: false,
  });
  const { builders, reps } = values;
  const n = values.drvs;
  const maxJobs = values['max-jobs'];
  const slots = builders * maxJobs;
  const timeoutMs = values['timeout-s'] * 1000;
  const nodeArgs = [...(values['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${values['cpu-prof']}`] : []), ...values['node-args'].split(' ').filter(Boolean)];
  const dag = layeredDag(n, values.layers, values['max-deps'], values.seed);
  log(`DAG: ${n} derivations, ${dag.layers} layers, ${dag.edges} edges; ${builders} builders × ${maxJobs} jobs = ${slots} slots; ${reps} rep(s)`);

  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-e2e-'));
  // The embedded PostgreSQL runs as the postgres user and must reach its data directory.
  chmodSync(dir, 0o755);
  const procs: Proc[] = [];
  const killOnExit = (): void => {
    for (const p of procs) p.child.kill('SIGKILL');
  };
  // Interrupted: no graceful drain, but no process or temporary directory is left behind either.
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping`);
    killOnExit();
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('exit', killOnExit);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let pg: EmbeddedDatabase | null = null;
  let pool: ReturnType<typeof createPool> | null = null;
  const machine = { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', loadAvg1AtStart: round(loadavg()[0]!, 2), nix: '' };
  const pause = async (): Promise<void> => {
    if (values['pause-s'] <= 0) return;
    spawnSync('sync');
    await new Promise((r) => setTimeout(r, values['pause-s'] * 1000));
  };
  try {
    machine.nix = (await runNix('nix-store', ['--version'])).stdout.toString('utf8').trim();

    // ---- the Hydrant fleet, started once ------------------------------------------
    log('hydrant: starting PostgreSQL, runner and builders');
    pg = await startEmbeddedPostgres({ stateDir: dir });
    pool = createPool(pg.url, { max: 4 });
    await ensureSchema(pool);
    const cacheDir = join(dir, 'cache');
    const secretKey = join(dir, 'cache.sk');
    await runNix('nix-store', ['--generate-binary-cache-key', 'bench-e2e-1', secretKey, join(dir, 'cache.pk')]);
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, randomBytes(24).toString('hex'));
    const runnerConfig = join(dir, 'runner.toml');
    writeFileSync(
      runnerConfig,
      runnerToml(
        { dbUrl: pg.url, hydraDataDir: join(dir, 'hydra'), tokenFile, rootsDir: join(dir, 'roots') },
        `remoteStoreAddr = ["file://${cacheDir}?compression=zstd&secret-key=${secretKey}"]`,
      ),
    );
    const traceLog = join(dir, 'tools.trace');
    const env = values['trace-tools'] ? { ...process.env, PATH: `${writeToolTracer(dir, traceLog)}:${process.env.PATH ?? ''}` } : process.env;
    const runner = startHydrant(dir, 'runner', ['serve', '--config', runnerConfig], nodeArgs, env);
    procs.push(runner);
    const port = Number((await runner.waitFor(/"port":(\d+),"msg":"builder protocol listening"/, 120_000))[1]);
    const ids = Array.from({ length: builders }, (_, i) => `b${i + 1}`);
    for (const id of ids) {
      const config = join(dir, `${id}.toml`);
      mkdirSync(join(dir, `${id}-tmp`));
      writeFileSync(
        config,
        [
          `server = "127.0.0.1:${port}"`,
          `tokenFile = "${tokenFile}"`,
          `machineId = "${id}"`,
          `storeDir = "${join(dir, id)}"`,
          `buildDir = "${join(dir, `${id}-tmp`)}"`,
          `maxJobs = ${maxJobs}`,
          'shutdownGraceInS = 2',
          '',
        ].join('\n'),
      );
      procs.push(startHydrant(dir, id, ['builder', '--config', config], nodeArgs, env));
    }
    for (const id of ids) await runner.waitFor(new RegExp(`"machine":"${id}"[^\\n]*"msg":"builder joined"|"msg":"builder joined"[^\\n]*"machine":"${id}"`), 60_000);
    log(`hydrant: ${builders} builders joined`);
    const db = pool;

    // ---- one repetition: plain Nix, then Hydrant --------------------------------------
    const oneRep = async (rep: number): Promise<Rep> => {
      const load0 = loadavg()[0]!;
      let nix: Rep['nix'] = null;
      if (!values['skip-nix']) {
        const nonce = randomBytes(4).toString('hex');
        const inst = await instantiateDag(dir, dag, nonce);
        await pause();
        log(`rep ${rep}: nix: instantiated ${inst.drvs.length} derivations in ${round(inst.seconds, 2)} s; realising with --max-jobs ${slots}`);
        const childCpu0 = cpuOf(process.pid).children;
        const t0 = performance.now();
        const outs = await runNixLines('nix-store', ['--realise', '--max-jobs', String(slots), ...inst.drvs]);
        const seconds = (performance.now() - t0) / 1000;
        const childCpu = cpuOf(process.pid).children - childCpu0;
        if (outs.length !== n) throw new Error(`nix-store --realise printed ${outs.length} outputs for ${n} derivations`);
        nix = { seconds, instantiateSeconds: inst.seconds, cpuSeconds: childCpu };
        log(`rep ${rep}: nix: ${round(seconds, 2)} s (${round(n / seconds, 1)} drvs/s)`);
      }

      const nonce = randomBytes(4).toString('hex');
      const inst = await instantiateDag(dir, dag, nonce);
      log(`rep ${rep}: hydrant: instantiated ${inst.drvs.length} derivations in ${round(inst.seconds, 2)} s`);
      const local = new LocalNixStore();
      const jobs: SubmitJob[] = await Promise.all(
        inst.drvs.map(async (drvPath, i) => {
          const d = await local.readDerivation(drvPath);
          return {
            job: `d${i}`, drvPath, nixName: `e2e-${nonce}-${i}`, system: d.system, description: null, license: null, homepage: null,
            maintainers: null, priority: JOB_DEFAULTS.priority, timeout: JOB_DEFAULTS.timeout, maxSilent: JOB_DEFAULTS.maxSilent,
            isChannel: false, outputs: d.outputs,
          };
        }),
      );
      await pause();
      // Everything this process started (PostgreSQL included), and each Hydrant process with its tools.
      const cpuAt = (): Record<string, { self: number; children: number }> => ({
        ...Object.fromEntries(procs.map((p) => [p.name, cpuOf(p.child.pid)])),
        all: cpuOf(process.pid),
      });
      const cpuBefore = cpuAt();
      const threadsAt = (): Record<string, Record<string, { user: number; sys: number }>> => Object.fromEntries(procs.map((p) => [p.name, threadCpu(p.child.pid)]));
      const threadsBefore = threadsAt();
      rmSync(traceLog, { force: true }); // only what happens from the queueing on
      const runnerLogAt = readFileSync(join(dir, 'runner.log')).length;
      const jobset = `e2e-${rep}`;
      const strace = values['strace-runner'] ? await countSyscalls(runner.child.pid!, join(dir, `runner-strace-${rep}.txt`)) : null;
      const t0 = performance.now();
      const submitted = await submitJobs(db, { project: 'bench', jobset, create: true, jobs, now: Math.floor(Date.now() / 1000), evalSeconds: 0, source: 'bench e2e' });
      const queuedMs = performance.now() - t0;
      if (submitted.added.length !== n) throw new Error(`queued ${submitted.added.length} builds, expected ${n}`);
      const ids = submitted.added.map((a) => a.id);
      let left = n;
      let lastReport = performance.now();
      let firstDone: number | null = null;
      while (left > 0) {
        await new Promise((r) => setTimeout(r, 50));
        left = (await db.query<{ n: number }>('select count(*)::int n from builds where finished = 0 and id = any($1)', [ids])).rows[0]!.n;
        if (firstDone === null && left < n) firstDone = performance.now() - t0;
        const now = performance.now();
        if (now - lastReport > 5000) {
          lastReport = now;
          log(`rep ${rep}: hydrant: ${n - left}/${n} builds finished after ${round((now - t0) / 1000, 1)} s`);
        }
        if (now - t0 > timeoutMs) throw new Error(`hydrant: ${left} of ${n} builds still queued after ${timeoutMs / 1000} s (logs in ${dir})`);
        for (const p of procs) if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode ?? p.child.signalCode}):\n${p.output().slice(-2000)}`);
      }
      const hydrantSeconds = (performance.now() - t0) / 1000;
      const cpuAfter = cpuAt();
      const threadsAfter = threadsAt();
      const syscalls = strace ? await strace.stop() : null;
      log(`rep ${rep}: hydrant: ${round(hydrantSeconds, 2)} s (${round(n / hydrantSeconds, 1)} drvs/s)${nix ? `; ratio ${round(hydrantSeconds / nix.seconds, 2)}` : ''}`);

      // ---- checks -------------------------------------------------------------------
      const statuses = await db.query<{ buildstatus: number; n: number }>('select buildstatus, count(*)::int n from builds where id = any($1) group by buildstatus', [ids]);
      const failed = statuses.rows.filter((r) => r.buildstatus !== 0);
      if (failed.length > 0) throw new Error(`hydrant: builds did not all succeed: ${JSON.stringify(statuses.rows)} (logs in ${dir})`);
      const outputs = (await db.query<{ path: string }>('select path from buildoutputs where build = any($1)', [ids])).rows.map((r) => r.path);
      if (outputs.length !== n) throw new Error(`hydrant: ${outputs.length} build outputs, expected ${n}`);
      const missing = outputs.filter((p) => !existsSync(join(cacheDir, `${p.slice('/nix/store/'.length, '/nix/store/'.length + 32)}.narinfo`)));
      if (missing.length > 0) throw new Error(`hydrant: ${missing.length} outputs have no narinfo in the cache, e.g. ${missing[0]}`);

      // ---- breakdown ------------------------------------------------------------------
      const steps = await db.query<{ machine: string; starttime: number; stoptime: number; overhead: number | null; status: number }>(
        'select machine, starttime, stoptime, overhead, status from buildsteps where build = any($1)',
        [ids],
      );
      const ok = steps.rows.filter((s) => s.status === 0);
      const perMachine: Record<string, number> = {};
      for (const s of ok) perMachine[s.machine] = (perMachine[s.machine] ?? 0) + 1;
      const uploads = uploadTimes(readFileSync(join(dir, 'runner.log')).subarray(runnerLogAt).toString('utf8'));
      // Per process: its own CPU (Node: main thread, worker pool, gRPC) and its Nix and compression tools'.
      const delta = (k: string, f: 'self' | 'children'): number => cpuAfter[k]![f] - cpuBefore[k]![f];
      const cpu: Record<string, { node: number; tools: number }> = Object.fromEntries(procs.map((p) => [p.name, { node: round(delta(p.name, 'self'), 1), tools: round(delta(p.name, 'children'), 1) }]));
      const cpuTotal = delta('all', 'children');
      const cpuPostgres = cpuTotal - procs.reduce((a, p) => a + delta(p.name, 'self') + delta(p.name, 'children'), 0);
      const perStep = (sec: number): number => round((sec * 1000) / n, 1);
      const builderProcs = procs.filter((p) => p.name !== 'runner');
      const cpuMsPerStepBy = {
        runnerNode: perStep(delta('runner', 'self')),
        runnerTools: perStep(delta('runner', 'children')),
        buildersNode: perStep(builderProcs.reduce((a, p) => a + delta(p.name, 'self'), 0)),
        buildersTools: perStep(builderProcs.reduce((a, p) => a + delta(p.name, 'children'), 0)),
        postgres: perStep(cpuPostgres),
      };

      const hydrant = {
        seconds: round(hydrantSeconds, 2),
        instantiateSeconds: round(inst.seconds, 2),
        stepsPerSecond: round(n / hydrantSeconds, 1),
        queueInsertMs: Math.round(queuedMs),
        firstBuildFinishedMs: firstDone === null ? null : Math.round(firstDone),
        steps: steps.rows.length,
        stepsSucceeded: ok.length,
        stepsPerMachine: perMachine,
        // Builder-side import of requisites + upload of outputs (BuildSteps.overhead).
        builderOverheadMsPerStep: stats(ok.map((s) => s.overhead ?? 0)),
        // Runner-side: GC roots + closure upload to the cache, per step.
        cacheUploadMsPerStep: stats(uploads),
        cpuSeconds: cpu,
        // Each Hydrant process's own CPU by thread (main thread, worker pool, libuv, V8), user and system.
        threadCpuSeconds: Object.fromEntries(procs.map((p) => [p.name, threadCpuDelta(threadsBefore[p.name]!, threadsAfter[p.name]!)])),
        cpuSecondsPostgres: round(cpuPostgres, 1),
        cpuSecondsTotal: round(cpuTotal, 1),
        cpuMsPerStep: round((cpuTotal * 1000) / n, 1),
        // The runner and the builders separately: Node (all threads) and the Nix processes each runs; PostgreSQL.
        cpuMsPerStepBy,
        ...(syscalls
          ? {
              // Per step, every call made, most frequent first.
              runnerSyscallsPerStep: {
                total: round(syscalls.total / n, 1),
                errors: round(syscalls.errors / n, 1),
                bySyscall: Object.fromEntries(
                  Object.entries(syscalls.bySyscall)
                    .sort((a, b) => b[1].calls - a[1].calls)
                    .map(([k, v]) => [k, v.errors ? { calls: round(v.calls / n, 1), errors: round(v.errors / n, 1) } : round(v.calls / n, 1)]),
                ),
              },
            }
          : {}),
        ...(values['trace-tools'] ? { toolCalls: toolTrace(traceLog, new Map(procs.map((p) => [p.child.pid!, p.name === 'runner' ? 'runner' : 'builders'])), n) } : {}),
      };
      return { nix, hydrant, loadAvg1: [round(load0, 2), round(loadavg()[0]!, 2)] };
    };

    const runs: Rep[] = [];
    for (let rep = 1; rep <= reps; rep++) runs.push(await oneRep(rep));
    const narinfos = readdirSync(cacheDir).filter((f) => f.endsWith('.narinfo')).length;

    // ---- SSH machines ---------------------------------------------------------------
    let ssh: Record<string, unknown> | null = null;
    if (values.ssh) {
      // The gRPC fleet leaves first: one runner holds the database at a time.
      await stopAll(procs);
      ssh = await sshPhase({ dir, pool, dbUrl: pg.url, dag, machines: builders, maxJobs, tokenFile, cacheDir, secretKey, timeoutMs, procs, env, nodeArgs });
    }

    const nixRuns = runs.flatMap((r) => (r.nix ? [r.nix] : []));
    const ratios = runs.flatMap((r) => (r.nix ? [round(r.hydrant.seconds / r.nix.seconds, 2)] : []));
    const cpuRatios = runs.flatMap((r) => (r.nix ? [round(r.hydrant.cpuSecondsTotal / r.nix.cpuSeconds, 2)] : []));
    const last = runs[runs.length - 1]!;
    const nixSeconds = nixRuns.length ? round(median(nixRuns.map((r) => r.seconds)), 2) : null;
    const by = Object.fromEntries(Object.keys(last.hydrant.cpuMsPerStepBy).map((k) => [k, round(median(runs.map((r) => r.hydrant.cpuMsPerStepBy[k]!)), 1)]));
    return {
      drvs: n,
      layers: dag.layers,
      edges: dag.edges,
      builders,
      maxJobs,
      slots,
      reps,
      // Medians over the repetitions (each rep: plain Nix, then Hydrant).
      nixSeconds,
      hydrantSeconds: round(median(runs.map((r) => r.hydrant.seconds)), 2),
      ratio: ratios.length ? round(median(ratios), 2) : null,
      ratios,
      // CPU time is what a shared machine distorts least: the same ratio in CPU seconds.
      cpuRatio: cpuRatios.length ? round(median(cpuRatios), 2) : null,
      nixCpuMsPerStep: nixRuns.length ? round(median(nixRuns.map((r) => (r.cpuSeconds * 1000) / n)), 1) : null,
      hydrantCpuMsPerStep: round(median(runs.map((r) => r.hydrant.cpuMsPerStep as number)), 1),
      hydrantCpuMsPerStepBy: by,
      cacheNarinfos: narinfos,
      runs: runs.map((r) => ({
        loadAvg1: r.loadAvg1,
        nix: r.nix ? { seconds: round(r.nix.seconds, 2), instantiateSeconds: round(r.nix.instantiateSeconds, 2), cpuSeconds: round(r.nix.cpuSeconds, 1), cpuMsPerStep: round((r.nix.cpuSeconds * 1000) / n, 1) } : null,
        hydrant: r.hydrant,
        ratio: r.nix ? round(r.hydrant.seconds / r.nix.seconds, 2) : null,
      })),
      ...(ssh ? { sshSeconds: ssh.seconds, sshRatio: nixSeconds ? round((ssh.seconds as number) / nixSeconds, 2) : null, ssh } : {}),
      machine: { ...machine, loadAvg1AtEnd: round(loadavg()[0]!, 2) },
    };
  } finally {
    await stopAll(procs);
    process.off('exit', killOnExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await pool?.end().catch(() => {});
    await pg?.stop().catch(() => {});
    if (values.keep) log(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}
