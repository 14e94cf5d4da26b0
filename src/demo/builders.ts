import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { hydrantArgv } from '../util/hydrant-bin.ts';
import { dieWithParent } from '../util/die-with-parent.ts';


export interface BuilderProcessOptions {
  machineId: string;
  /** The runner's gRPC address, HOST:PORT. */
  server: string;
  tokenFile: string;
  /** A private store under this directory; undefined: the host store. */
  storeDir: string | undefined;
  /** The agent's output goes here. */
  logFile: string;
  /** Also copy the agent's output to stderr, each line prefixed with the machine id. */
  echo: boolean;
}

/**
 * A `hydrant builder` agent in a child process. Its output goes to a log
 * file (the last lines are kept for error messages); stop() sends SIGTERM
 * and SIGKILL after a grace period. The child is killed outright if this
 * process exits without stopping it.
 */
export class BuilderProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly log: WriteStream;
  private readonly tail: string[] = [];
  private partial = '';
  private readonly killOnExit = (): void => {
    this.child.kill('SIGKILL');
  };

  constructor(readonly o: BuilderProcessOptions) {
    const args = ['builder', '--server', o.server, '--token-file', o.tokenFile, '--machine-id', o.machineId];
    if (o.storeDir) args.push('--store-dir', o.storeDir);
    this.log = createWriteStream(o.logFile, { flags: 'a' });
    // A failing log file loses the log, not the demo: the tail below still names what went wrong.
    this.log.on('error', () => {}).once('error', (err) => this.tail.push(`cannot write ${o.logFile}: ${err.message}`));
    // SIGTERM (drain) when the demo dies, even by SIGKILL: no agent is left dialling a runner that is gone.
    const [cmd, argv] = dieWithParent('TERM', process.execPath, hydrantArgv(args));
    this.child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    const onData = (b: Buffer): void => {
      this.log.write(b);
      const text = this.partial + b.toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        this.tail.push(line);
        if (this.tail.length > 20) this.tail.shift();
        if (o.echo) process.stderr.write(`[${o.machineId}] ${line}\n`);
      }
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    this.exited = new Promise((resolve) => {
      this.child.once('error', (err) => {
        this.tail.push(String(err));
        resolve({ code: null, signal: null });
      });
      this.child.once('close', (code, signal) => resolve({ code, signal }));
    });
    void this.exited.then(() => process.off('exit', this.killOnExit));
    process.once('exit', this.killOnExit);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** How the agent ended: `exit code N` or `killed by SIGNAL`. */
  exitDescription(): string {
    return this.child.signalCode ? `killed by ${this.child.signalCode}` : `exit code ${this.child.exitCode ?? '?'}`;
  }

  /** The agent's last output lines. */
  lastLines(): string {
    return [...this.tail, this.partial].filter(Boolean).join('\n');
  }

  /** SIGTERM (the agent drains), then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(t);
    }
    await new Promise<void>((resolve) => this.log.end(resolve));
  }
}

/** Per-builder paths under the demo's `builders/` directory. */
export function builderPaths(buildersDir: string, n: number): { machineId: string; storeDir: string; logFile: string } {
  return { machineId: `demo-builder-${n}`, storeDir: join(buildersDir, String(n)), logFile: join(buildersDir, `demo-builder-${n}.log`) };
}
