import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { RunnerDaemon } from '../../src/daemon/serve.ts';
import { useTestDatabase, type TestDatabase } from './db.ts';
import { startBuilder, type CliProcess } from './fleet.ts';
import { quietLog } from './runtime.ts';

/**
 * A runner daemon in the test process (its scheduler inspectable), on `db`,
 * with a builder token, gRPC and HTTP on free ports, and its data in `dir`;
 * builders are real `hydrant builder` processes with private stores.
 */
export class InProcessRunner {
  readonly builders: CliProcess[] = [];

  private constructor(
    readonly daemon: RunnerDaemon,
    readonly dir: string,
    readonly tokenFile: string,
  ) {}

  static async start(dbUrl: string, dir: string, overrides: Record<string, unknown> = {}): Promise<InProcessRunner> {
    const tokenFile = join(dir, 'builder-token');
    writeFileSync(tokenFile, randomBytes(16).toString('hex'));
    const daemon = new RunnerDaemon({
      overrides: {
        dbUrl, hydraDataDir: dir, rootsDir: join(dir, 'roots'), tokenPaths: [tokenFile], grpcListen: '127.0.0.1:0', httpListen: '127.0.0.1:0',
        ...overrides,
      },
      log: quietLog,
    });
    await daemon.start();
    return new InProcessRunner(daemon, dir, tokenFile);
  }

  get url(): string {
    return `http://127.0.0.1:${this.daemon.http!.port}`;
  }

  builder(id: string): CliProcess {
    const b = startBuilder(this.dir, `127.0.0.1:${this.daemon.grpcPort}`, this.tokenFile, id);
    this.builders.push(b);
    return b;
  }

  async stop(): Promise<void> {
    for (const b of this.builders) b.child.kill('SIGKILL');
    await this.daemon.stop();
  }
}

/**
 * For a describe block: a fresh database and a directory of its own
 * (`hydrant-<name>-…`), and `start` for the in-process runners its tests
 * start there, each stopped after the block's tests.
 */
export function useInProcessRunner(name: string): {
  db: TestDatabase;
  dir: string;
  start(overrides?: Record<string, unknown>): Promise<InProcessRunner>;
} {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), `hydrant-${name}-`));
  const runners: InProcessRunner[] = [];
  afterAll(async () => {
    for (const r of runners) await r.stop();
  });
  return {
    db,
    dir,
    async start(overrides = {}) {
      const runner = await InProcessRunner.start(db.url, dir, overrides);
      runners.push(runner);
      return runner;
    },
  };
}
