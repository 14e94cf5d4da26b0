import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redactUrl } from '../../src/config/runner-config.ts';
import { HYDRA_SCHEMA_VERSION } from '../../src/db/required-schema.ts';
import { runCli, startCli } from '../helpers/cli.ts';
import { createTestDatabase, useTestDatabase } from '../helpers/db.ts';
import { startRunner, type CliProcess } from '../helpers/fleet.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';

/** A port held by this process, so that a runner cannot bind it. */
async function holdPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

/** The lines of stderr that are not structured log records. */
const plainLines = (stderr: string): string[] => stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'));

describe('mistakes an operator can make get one line naming what to change', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-operr-'));
  const db = useTestDatabase();

  it('hydrant --version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    const r = await runCli(['--version']);
    expect(r.stdout).toBe(`hydrant ${pkg.version}\n`);
    expect(r.code).toBe(0);
  });

  it('an unknown flag is one line naming it and the help to read, exit 2', async () => {
    const r = await runCli(['serve', '--http-port', '8080']);
    expect(r.stderr).toBe('hydrant serve: unknown option --http-port (see hydrant help serve)\n');
    expect(r.code).toBe(2);
  });

  it('--log-level and --log-format are checked on every command', async () => {
    for (const cmd of ['serve', 'submit', 'db', 'builder', 'demo']) {
      const r = await runCli([cmd, '--log-level', 'loud']);
      expect(r.stderr, cmd).toBe("hydrant: CONFIG_INVALID: --log-level: 'loud' is not one of trace, debug, info, warn, error, fatal, silent\n");
    }
    const f = await runCli(['db', 'check', '--log-format', 'xml']);
    expect(f.stderr).toBe("hydrant: CONFIG_INVALID: --log-format: 'xml' is not json or pretty\n");
  });

  it('submit without a database named refuses instead of filling an embedded one no runner reads', async () => {
    const r = await runCli(['submit', '--project', 'p', '--jobset', 'j', '/nix/store/00000000000000000000000000000000-x.drv'], { HYDRA_DATABASE_URL: '' });
    expect(r.stderr).toBe(
      "hydrant: CONFIG_INVALID: hydrant submit: no database named: pass --config with the runner's configuration file, --db-url URL (or HYDRA_DATABASE_URL), or --embedded for the embedded PostgreSQL in /var/lib/hydra/hydrant\n",
    );
    expect(r.code).toBe(1);
    const both = await runCli(['db', 'check', '--embedded', '--db-url', 'postgres://h/db'], { HYDRA_DATABASE_URL: '' });
    expect(both.stderr).toBe('hydrant: CONFIG_INVALID: hydrant db: --embedded contradicts --db-url: drop one of them\n');
  });

  it('--db-url that is not a URL names the flag and the form of one', async () => {
    const r = await runCli(['db', 'check', '--db-url', 'hydra.example'], { HYDRA_DATABASE_URL: '' });
    expect(r.stderr).toBe(
      "hydrant: CONFIG_INVALID: dbUrl (--db-url): not a PostgreSQL URL ('hydra.example' is not a URL); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgres:///DATABASE?host=/run/postgresql for a local socket\n",
    );
  });

  it('a database that refuses the connection is named (without its password) with where it was set', async () => {
    const held = await holdPort(); // a free port: bound, then released, so nothing listens there
    held.server.close();
    const r = await runCli(['db', 'check', '--db-url', `postgres://u:secret@127.0.0.1:${held.port}/hydra`], { HYDRA_DATABASE_URL: '' });
    expect(r.stderr).toBe(`hydrant: DB_UNAVAILABLE: postgres://u:***@127.0.0.1:${held.port}/hydra: cannot connect to the database: connect ECONNREFUSED 127.0.0.1:${held.port} (set in --db-url or dbUrl)\n`);
  });

  it('a builder without a token file names the flag and the key', async () => {
    const r = await runCli(['builder', '--server', '127.0.0.1:1']);
    expect(r.stderr).toBe('hydrant: CONFIG_INVALID: tokenFile (--token-file) is required: pass --token-file, or set tokenFile in a configuration file (--config)\n');
    expect(r.code).toBe(1);
  });

  it("a Nix evaluation error shows Nix's own headline first, not Hydrant's wrapper expression", async () => {
    const file = join(dir, 'broken.nix');
    writeFileSync(file, '{ a = 1;\n');
    const r = await runCli(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', '--create', '--file', file]);
    expect(r.stderr.startsWith('hydrant: NIX_EVAL: error: syntax error, unexpected end of file\n')).toBe(true);
    expect(r.stderr).toContain(`${file}:1:9`);
    expect(r.stderr).not.toContain('listToAttrs');
    expect(r.code).toBe(1);
  });

  it('submit prints the database it wrote to, and --create makes a jobset hydra-evaluator leaves alone', async () => {
    const [drv] = await instantiate(`let ${MK_DRV} in { a = mk { name = "operr-${Date.now()}"; script = "echo > $out"; }; }`, ['a']);
    const r = await runCli(['submit', '--db-url', db.url, '--project', 'ops', '--jobset', 'adhoc', '--create', drv!]);
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n')[0]).toBe(`database: ${redactUrl(db.url)}`);
    const js = (await db.pool.query("select enabled, checkinterval, triggertime from jobsets where name = 'adhoc'")).rows;
    // hydra-evaluator selects jobsets with enabled != 0 and never polls one with checkinterval <= 0.
    expect(js).toEqual([{ enabled: 0, checkinterval: 0, triggertime: null }]);
  }, 60_000);

  it('db check on hydra.sql loaded without hydra-init explains the missing SchemaVersion row', async () => {
    const other = await createTestDatabase();
    try {
      await other.pool.query('delete from schemaversion');
      const r = await runCli(['db', 'check', '--db-url', other.url]);
      expect(r.stdout.split('\n')[1]).toBe(
        `schema ok (SchemaVersion has no row: hydra.sql was loaded without hydra-init, which needs one; the columns Hydrant uses are present. If it is Hydra's current hydra.sql: insert into SchemaVersion (version) values (${HYDRA_SCHEMA_VERSION}))`,
      );
      expect(r.code).toBe(0);
    } finally {
      await other.drop();
    }
  });

  it('a port in use names httpListen or grpcListen and its flag, without a stack trace', async () => {
    const held = await holdPort();
    const other = await createTestDatabase();
    try {
      const token = join(dir, 'token');
      writeFileSync(token, 'a-token-of-enough-length-0123456789');
      const config = join(dir, 'tokens.toml');
      writeFileSync(config, `tokenPaths = ["${token}"]\nhydraDataDir = "${dir}"\n`);
      const http = await runCli(['serve', '--config', config, '--db-url', other.url, '--grpc-listen', '127.0.0.1:0', '--http-listen', `127.0.0.1:${held.port}`]);
      expect(plainLines(http.stderr)).toEqual([
        `hydrant: CONFIG_INVALID: httpListen (--http-listen) 127.0.0.1:${held.port}: the address is in use (another runner, or another service on that port?): choose another HOST:PORT, or '' to turn the HTTP API off`,
      ]);
      expect(http.code).toBe(1);
      const grpc = await runCli(['serve', '--config', config, '--db-url', other.url, '--http-listen', '', '--grpc-listen', `127.0.0.1:${held.port}`]);
      expect(plainLines(grpc.stderr)).toEqual([
        `hydrant: CONFIG_INVALID: grpcListen (--grpc-listen) 127.0.0.1:${held.port}: the address is in use (another runner, or another service on that port?): choose another HOST:PORT`,
      ]);
      expect(grpc.code).toBe(1);
    } finally {
      held.server.close();
      await other.drop();
    }
  }, 60_000);

  describe('against a running runner', () => {
    let runner: { proc: CliProcess; port: number; tokenFile: string };
    const procs: CliProcess[] = [];
    beforeAll(async () => {
      mkdirSync(join(dir, 'runner'));
      runner = await startRunner(join(dir, 'runner'), db.url);
      procs.push(runner.proc);
    }, 90_000);
    afterAll(async () => {
      for (const p of procs) {
        p.child.kill('SIGTERM');
        await p.exited;
      }
    });

    it('a builder with a wrong token says so at ERROR level and exits 1', async () => {
      const wrong = join(dir, 'wrong-token');
      writeFileSync(wrong, 'not-the-token-0123456789abcdef');
      const r = await runCli(['builder', '--server', `127.0.0.1:${runner.port}`, '--token-file', wrong, '--machine-id', 'wrong-token']);
      const line = `the runner at 127.0.0.1:${runner.port} refused the token in ${wrong} (--token-file): missing or invalid bearer token`;
      const records = r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; code?: string });
      expect(records.filter((x) => x.level === 50)).toEqual([expect.objectContaining({ msg: line, code: 'BUILDER_UNAUTHENTICATED' })]);
      expect(plainLines(r.stderr)).toEqual([`hydrant: BUILDER_UNAUTHENTICATED: ${line}`]);
      expect(r.code).toBe(1);
    }, 60_000);

    it('a builder joins with the --max-jobs and --systems it was given', async () => {
      const b = startCli(['builder', '--server', `127.0.0.1:${runner.port}`, '--token-file', runner.tokenFile, '--machine-id', 'flagged', '--store-dir', join(dir, 'flagged'), '--max-jobs', '3', '--systems', 'x86_64-linux,aarch64-linux']);
      procs.push(b);
      const joined = await runner.proc.waitFor(/\{[^\n]*"machine":"flagged"[^\n]*"msg":"builder joined"\}/, 60_000);
      expect(JSON.parse(joined)).toMatchObject({ systems: ['x86_64-linux', 'aarch64-linux'], maxJobs: 3 });
    }, 90_000);
  });
});
