import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { attempts, buildRow, expectSucceeded, PairedProxy, joined, startRunner, startRunnerWithProxiedBuilder, submit, useFleet, type CliProcess, type RunnerProcess } from '../helpers/fleet.ts';
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
class HoldingProxy extends PairedProxy {
  /** While held: what each builder connection sent, in order, with where it goes. */
  #held: [Socket, Buffer][] | null = null;
  /** Bytes from the builder kept since hold(). */
  heldBytes = 0;

  static start(target: number): Promise<HoldingProxy> {
    return new HoldingProxy(target).listen();
  }

  protected relay(client: Socket, upstream: Socket): void {
    this.pair(client, upstream);
    upstream.on('data', (b: Buffer) => client.write(b));
    client.on('data', (b: Buffer) => {
      if (this.#held) {
        this.#held.push([upstream, b]);
        this.heldBytes += b.length;
      } else upstream.write(b);
    });
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
}

describe('a job aborted while its builder uploads the output', () => {
  const fleet = useFleet('abort-upload');
  const { db, dir } = fleet;
  const nonce = randomBytes(4).toString('hex');
  const started = join(dir, 'started');
  const go = join(dir, 'go');
  let runner: RunnerProcess;
  let proxy: HoldingProxy;
  let builder: CliProcess;

  beforeAll(async () => {
    // The runner must not drop the builder while the test holds its traffic back.
    ({ runner, proxy, builder } = await startRunnerWithProxiedBuilder(fleet, 'builderPingTimeoutInS = 600\nbuilderGraceInS = 600', HoldingProxy.start, ''));
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
    // Nothing is left busy, and the aborted attempt ended as cancelled.
    await expectSucceeded(db.pool, next!, [['b1', 0, 0]]);
    expect(await attempts(db.pool, big!)).toEqual([['b1', 4, 0]]);
  }, 180_000);
});

describe('a runner restarted while its builder uploads an output', () => {
  const fleet = useFleet('restart-upload');
  const { db, dir, procs } = fleet;
  const nonce = randomBytes(4).toString('hex');
  const started = join(dir, 'started');
  const go = join(dir, 'go');

  it('survives: the new runner has the step built again, on the same builder', async () => {
    const config = 'builderPingTimeoutInS = 600\nretryInterval = 1\nretryBackoff = 1';
    const { runner: first, proxy, builder } = await startRunnerWithProxiedBuilder(fleet, config, HoldingProxy.start);
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
    // The attempt of the dead runner was aborted when the new one started; the new one's succeeded.
    await expectSucceeded(db.pool, big!, [
      ['b1', 3, 0],
      ['b1', 0, 0],
    ]);
  }, 180_000);
});
