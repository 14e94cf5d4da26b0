import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { buildRow, busySteps, joined, startBuilder, startRunner, stepRows, submit, type CliProcess, type RunnerProcess } from '../helpers/fleet.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * A builder whose job is aborted while it uploads the job's output: a real
 * `hydrant serve` runner, a real `hydrant builder` process dialling it
 * through a proxy that can hold back what the builder sends, PostgreSQL and
 * Nix.
 */

/**
 * A TCP proxy that can hold the builder-to-runner direction: while held,
 * what the builder sends is kept (and counted) instead of forwarded, while
 * the runner's messages still reach the builder. An upload then stalls
 * mid-stream once HTTP/2 flow control runs out of window, and stays in
 * flight for as long as the test likes.
 */
class HoldingProxy {
  readonly #sockets = new Set<Socket>();
  /** While held: what each builder connection sent, in order, with where it goes. */
  #held: [Socket, Buffer][] | null = null;
  /** Bytes from the builder kept since hold(). */
  heldBytes = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    /** Where new connections go (change it to follow a restarted runner). */
    public target: number,
  ) {}

  static async start(target: number): Promise<HoldingProxy> {
    let self!: HoldingProxy;
    const server = createServer((client) => {
      const upstream = connect(self.target, '127.0.0.1');
      for (const s of [client, upstream]) {
        self.#sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          self.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      upstream.on('data', (b: Buffer) => client.write(b));
      client.on('data', (b: Buffer) => {
        if (self.#held) {
          self.#held.push([upstream, b]);
          self.heldBytes += b.length;
        } else upstream.write(b);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy has no port');
    self = new HoldingProxy(server, address.port, target);
    return self;
  }

  hold(): void {
    this.#held = [];
    this.heldBytes = 0;
  }

  /** Sends on what was held (to connections still open), and forwards from now on. */
  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const [upstream, b] of held) if (!upstream.destroyed) upstream.write(b);
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

describe('a job aborted while its builder uploads the output', () => {
  let db: TestDatabase;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-abort-upload-'));
  const nonce = randomBytes(4).toString('hex');
  const started = join(dir, 'started');
  const go = join(dir, 'go');
  const procs: CliProcess[] = [];
  let runner: RunnerProcess;
  let proxy: HoldingProxy;
  let builder: CliProcess;

  beforeAll(async () => {
    db = await createTestDatabase();
    // The runner must not drop the builder while the test holds its traffic back.
    runner = await startRunner(dir, db.url, 'builderPingTimeoutInS = 600\nbuilderGraceInS = 600');
    procs.push(runner.proc);
    proxy = await HoldingProxy.start(runner.port);
    builder = startBuilder(dir, `127.0.0.1:${proxy.port}`, runner.tokenFile, 'b1');
    procs.push(builder);
    await joined(runner.proc, ['b1']);
  });

  afterAll(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await proxy?.close();
    await db?.drop();
  });

  it('survives: the upload is cancelled, nothing stays busy, and the builder builds the next job', async () => {
    const file = join(dir, 'release.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} in {
        # 2 MB that no compression shrinks: its upload needs far more than one HTTP/2 window.
        big = mk { name = "big-${nonce}"; script = "/bin/touch ${started}; while [ ! -e ${go} ]; do /bin/sleep 0.1; done; /bin/head -c 2000000 /dev/urandom > $out"; };
        next = mk { name = "next-${nonce}"; script = "echo next > $out"; };
      }`,
    );
    const { big } = await submit(db.url, file, 'abort-upload', ['big']);
    await waitFor(() => existsSync(started), 60_000, 'the build to start');
    // From now on nothing the builder sends reaches the runner; the build goes on to its upload.
    proxy.hold();
    writeFileSync(go, '');
    // The upload is under way once more than a window's worth of output is held (the log is a few bytes).
    await waitFor(() => proxy.heldBytes > 60_000, 60_000, 'the upload to be in flight');

    // Cancelling the build makes the runner abort the job on the builder, in the middle of the upload.
    const now = Math.floor(Date.now() / 1000);
    const cancelled = await db.pool.query('update builds set finished = 1, buildstatus = 4, iscachedbuild = 0, starttime = $2, stoptime = $2 where id = $1 and finished = 0', [big, now]);
    expect(cancelled.rowCount).toBe(1);
    await builder.waitFor(/job \S+ aborted: no build needs this step any more/, 30_000);
    proxy.release();

    // The builder is still there and serves the next job (it is the only builder).
    const { next } = await submit(db.url, file, 'abort-upload', ['next']);
    await waitFor(async () => builder.child.exitCode !== null || (await buildRow(db.pool, next!)).finished === 1, 60_000, 'the next build to finish');
    expect(builder.child.exitCode, builder.output()).toBeNull();
    expect(builder.output()).not.toMatch(/CANCELLED|Unhandled|at BuilderAgent/);
    expect((await buildRow(db.pool, next!)).buildstatus).toBe(0);
    expect((await stepRows(db.pool, next!)).map((r) => [r.machine, r.status, r.busy])).toEqual([['b1', 0, 0]]);
    // The aborted attempt ended as cancelled; nothing is left busy.
    expect((await stepRows(db.pool, big!)).map((r) => [r.machine, r.status, r.busy])).toEqual([['b1', 4, 0]]);
    expect(await busySteps(db.pool)).toBe(0);
  }, 180_000);
});

describe('a runner restarted while its builder uploads an output', () => {
  let db: TestDatabase;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-restart-upload-'));
  const nonce = randomBytes(4).toString('hex');
  const started = join(dir, 'started');
  const go = join(dir, 'go');
  const procs: CliProcess[] = [];
  let proxy: HoldingProxy;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await proxy?.close();
    await db?.drop();
  });

  it('survives: the new runner has the step built again, on the same builder', async () => {
    const config = 'builderPingTimeoutInS = 600\nretryInterval = 1\nretryBackoff = 1';
    const first = await startRunner(dir, db.url, config);
    procs.push(first.proc);
    proxy = await HoldingProxy.start(first.port);
    const builder = startBuilder(dir, `127.0.0.1:${proxy.port}`, first.tokenFile, 'b1', 'reconnectMinMs = 200\nreconnectMaxMs = 1000');
    procs.push(builder);
    await joined(first.proc, ['b1']);
    const file = join(dir, 'release.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} in { big = mk { name = "restart-big-${nonce}"; script = "/bin/touch ${started}; while [ ! -e ${go} ]; do /bin/sleep 0.1; done; /bin/head -c 2000000 /dev/urandom > $out"; }; }`,
    );
    const { big } = await submit(db.url, file, 'restart-upload');
    await waitFor(() => existsSync(started), 60_000, 'the build to start');
    proxy.hold();
    writeFileSync(go, '');
    await waitFor(() => proxy.heldBytes > 60_000, 60_000, 'the upload to be in flight');

    // The runner dies mid-upload; a new one takes over the database (and the builder's token).
    first.proc.child.kill('SIGKILL');
    await first.proc.exited;
    const second = await startRunner(dir, db.url, config, { token: first.token });
    procs.push(second.proc);
    proxy.target = second.port;
    proxy.release();
    // The builder joins the new runner (it used to die of its upload's failure instead).
    let rejoined = false;
    await Promise.race([
      joined(second.proc, ['b1']).then(() => void (rejoined = true)),
      builder.exited.then((code) => {
        if (!rejoined) throw new Error(`the builder exited (${code}):\n${builder.output()}`);
      }),
    ]);

    await waitFor(async () => builder.child.exitCode !== null || (await buildRow(db.pool, big!)).finished === 1, 90_000, 'the build to finish');
    expect(builder.child.exitCode, builder.output()).toBeNull();
    expect(builder.output()).not.toMatch(/CANCELLED|Unhandled|at BuilderAgent/);
    expect((await buildRow(db.pool, big!)).buildstatus).toBe(0);
    // The attempt of the dead runner was aborted when the new one started; the new one's succeeded.
    expect((await stepRows(db.pool, big!)).map((r) => [r.machine, r.status, r.busy])).toEqual([
      ['b1', 3, 0],
      ['b1', 0, 0],
    ]);
    expect(await busySteps(db.pool)).toBe(0);
  }, 180_000);
});
