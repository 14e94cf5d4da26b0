import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NarDumpError, NixFormatError } from '../../src/errors/index.ts';
import {
  NarByteReader,
  formatNarListing,
  formatNarPath,
  narChunks,
  narHash,
  narListing,
  narListingJson,
  narReadable,
  narString,
  parseNar,
  restoreNar,
} from '../../src/nix/nar.ts';
import type { NarEvent } from '../../src/nix/nar.ts';
import { nixEnv } from '../../src/nix/tools.ts';
import { MK_DRV, instantiate, realise, runNix, runNixLines } from '../helpers/nix.ts';

const execFileP = promisify(execFile);

async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of source) parts.push(c);
  return Buffer.concat(parts);
}

async function nixDump(path: string): Promise<Buffer> {
  const { stdout } = await execFileP('nix-store', ['--dump', path], { encoding: 'buffer', maxBuffer: 1 << 30, env: nixEnv() });
  return stdout;
}

/** Nix's own listing of a NAR file (the `root` part of a `.ls`). */
async function nixNarLs(narFile: string): Promise<Buffer> {
  const { stdout } = await execFileP('nix', ['nar', 'ls', '--json', '-R', narFile, '/'], { encoding: 'buffer', env: nixEnv() });
  return stdout;
}

/** Splits a buffer into pieces at random points (to exercise chunk boundaries). */
function rechunk(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, buf.length]) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  return out;
}

async function events(source: Iterable<Buffer> | AsyncIterable<Buffer>): Promise<NarEvent[]> {
  const out: NarEvent[] = [];
  for await (const e of parseNar(source)) out.push(e);
  return out;
}

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'hydrant-nar-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('NAR of real store paths', () => {
  let outputs: Record<string, string>;

  beforeAll(async () => {
    // One directory output exercising every node kind, plus outputs whose root is a file or a symlink.
    const expr = `let ${MK_DRV} in {
      tree = mk { name = "nar-tree"; script = ''
        /bin/mkdir -p $out/dir/nested/deeper $out/emptydir $out/bin
        : > $out/empty
        printf 'x' > $out/one
        printf '1234567' > $out/seven
        printf '12345678' > $out/eight
        printf '123456789' > $out/nine
        printf '#!/bin/sh\\necho hi\\n' > $out/bin/run
        /bin/chmod 0755 $out/bin/run
        printf 'g' > $out/group-exec-only
        /bin/chmod 0645 $out/group-exec-only
        printf 'deep' > $out/dir/nested/deeper/file
        /bin/ln -s ../one $out/dir/rel-link
        /bin/ln -s /nix/store/does-not-exist $out/dir/abs-link
        /bin/ln -s nested $out/dir/dir-link
        printf 'B' > $out/B
        printf 'a' > $out/a
        printf 'z' > "$out/name with spaces"
        printf 'u' > "$out/\\303\\251t\\303\\251"
        /bin/dd if=/dev/zero of=$out/big bs=1000 count=300 2>/dev/null
      ''; };
      file = mk { name = "nar-file"; script = "printf 'just a file' > $out"; };
      exe = mk { name = "nar-exe"; script = "printf 'exe' > $out; /bin/chmod 0555 $out"; };
      link = mk { name = "nar-link"; script = "/bin/ln -s /nix/store/some-target $out"; };
      emptydir = mk { name = "nar-emptydir"; script = "/bin/mkdir $out"; };
      emptyfile = mk { name = "nar-emptyfile"; script = ": > $out"; };
    }`;
    const names = ['tree', 'file', 'exe', 'link', 'emptydir', 'emptyfile'];
    const drvs = await instantiate(expr, names);
    const outs = await realise(drvs);
    outputs = Object.fromEntries(names.map((n, i) => [n, outs[i]!]));
  });

  const kinds = ['tree', 'file', 'exe', 'link', 'emptydir', 'emptyfile'];

  it.each(kinds)('%s: our NAR equals nix-store --dump, and the hashes agree', async (kind) => {
    const path = outputs[kind]!;
    const theirs = await nixDump(path);
    expect((await collect(narChunks(path))).equals(theirs)).toBe(true);
    // Small chunks cross every token/padding boundary and split the big file.
    expect((await collect(narChunks(path, { chunkSize: 64 }))).equals(theirs)).toBe(true);
    expect((await collect(narChunks(path, { chunkSize: 100, io: 'sync' }))).equals(theirs)).toBe(true);

    const ours = await narHash(path);
    expect(ours.size).toBe(theirs.length);
    const [qhash] = await runNixLines('nix-store', ['-q', '--hash', path]);
    const [qsize] = await runNixLines('nix-store', ['-q', '--size', path]);
    const [base16] = await runNixLines('nix', ['hash', 'to-base16', qhash!]);
    expect(ours.sha256.toString('hex')).toBe(base16);
    expect(String(ours.size)).toBe(qsize);
    const [sri] = await runNixLines('nix', ['hash', 'path', path]);
    expect(`sha256-${ours.sha256.toString('base64')}`).toBe(sri);
  });

  it('treats only the owner execute bit as executable, like Nix', async () => {
    // The store canonicalises modes to 0444/0555, so this needs a plain directory.
    const dir = join(tmp, 'modes');
    mkdirSync(dir);
    const modes = { u: 0o744, g: 0o654, o: 0o645, none: 0o644, all: 0o755 };
    for (const [name, mode] of Object.entries(modes)) {
      writeFileSync(join(dir, name), name);
      chmodSync(join(dir, name), mode);
    }
    const theirs = await nixDump(dir);
    expect((await collect(narChunks(dir))).equals(theirs)).toBe(true);
    const evs = await events([theirs]);
    const executable = evs.flatMap((e) => (e.type === 'regular' && e.executable ? [e.path.at(-1)!.toString()] : []));
    expect(executable).toEqual(['all', 'u']);
  });

  it.each(kinds)('%s: parse(nix dump) → restore → dump is identical, in any chunking', async (kind) => {
    const theirs = await nixDump(outputs[kind]!);
    const dest = join(tmp, `restore-${kind}`);
    await restoreNar(rechunk(theirs, [1, 7, 13, 100, 101, 4000, 70000]), dest);
    expect((await nixDump(dest)).equals(theirs)).toBe(true);
    expect((await collect(narChunks(dest))).equals(theirs)).toBe(true);
  });

  it('streams as a Readable too, and names event paths', async () => {
    const path = outputs.tree!;
    const theirs = await nixDump(path);
    expect((await collect(narReadable(path))).equals(theirs)).toBe(true);
    const evs = await events(narReadable(path, { chunkSize: 256 }));
    const deep = evs.find((e) => e.type === 'regular' && formatNarPath(e.path) === 'dir/nested/deeper/file');
    expect(deep).toMatchObject({ size: 4, executable: false });
    expect(evs.filter((e) => e.type === 'symlink').map((e) => [formatNarPath(e.path), e.type === 'symlink' && e.target.toString()])).toEqual([
      ['dir/abs-link', '/nix/store/does-not-exist'],
      ['dir/dir-link', 'nested'],
      ['dir/rel-link', '../one'],
    ]);
  });

  it('lists the NAR exactly as Nix does (nix nar ls, and the .ls of a file:// binary cache)', async () => {
    const path = outputs.tree!;
    const nar = await nixDump(path);
    const narFile = join(tmp, 'tree.nar');
    writeFileSync(narFile, nar);
    const ours = await narListingJson([nar]);
    expect(ours.toString('latin1')).toBe(`{"version":1,"root":${(await nixNarLs(narFile)).toString('latin1')}}`);

    const cache = join(tmp, 'cache');
    await runNix('nix', ['copy', '--to', `file://${cache}?write-nar-listing=true&compression=none`, path]);
    const hashPart = path.slice('/nix/store/'.length, '/nix/store/'.length + 32);
    const written = readFileSync(join(cache, `${hashPart}.ls`));
    expect(ours.equals(written)).toBe(true);

    const listing = await narListing([nar]);
    expect(formatNarListing(listing).equals(written)).toBe(true);
    expect(JSON.parse(written.toString('utf8'))).toEqual(JSON.parse(JSON.stringify(listing)));
    const root = listing.root;
    if (root.type !== 'directory') throw new Error('expected a directory');
    const big = root.entries.big;
    expect(big).toMatchObject({ type: 'regular', size: 300_000 });
    if (big?.type !== 'regular') throw new Error('expected a file');
    expect(nar.subarray(big.narOffset, big.narOffset + 8).equals(Buffer.alloc(8))).toBe(true);
    expect(root.entries.bin).toMatchObject({ type: 'directory', entries: { run: { type: 'regular', executable: true } } });
  });
});

// ---------------------------------------------------------------------------
// Random trees

type Tree =
  | { kind: 'file'; data: Uint8Array; mode: number }
  | { kind: 'symlink'; target: Uint8Array }
  | { kind: 'dir'; entries: [Uint8Array, Tree][] };

const NAME_BYTES = [0x61, 0x62, 0x41, 0x5a, 0x30, 0x39, 0x2e, 0x2d, 0x5f, 0x20, 0x0a, 0x7f, 0x80, 0xc3, 0xa9, 0xff];
const nameArb = fc
  .array(fc.constantFrom(...NAME_BYTES), { minLength: 1, maxLength: 6 })
  .map((a) => Uint8Array.from(a))
  .filter((n) => !(n.length === 1 && n[0] === 0x2e) && !(n.length === 2 && n[0] === 0x2e && n[1] === 0x2e));

const treeArb = fc.letrec<{ tree: Tree; dir: Tree; leaf: Tree }>((tie) => ({
  leaf: fc.oneof(
    fc.record({
      kind: fc.constant('file' as const),
      data: fc.oneof(fc.uint8Array({ maxLength: 20 }), fc.uint8Array({ minLength: 60, maxLength: 300 })),
      mode: fc.constantFrom(0o644, 0o755, 0o645, 0o744, 0o654, 0o444),
    }),
    fc.record({ kind: fc.constant('symlink' as const), target: nameArb }),
  ),
  dir: fc.record({
    kind: fc.constant('dir' as const),
    entries: fc.uniqueArray(fc.tuple(nameArb, tie('tree')), {
      maxLength: 5,
      selector: ([n]) => Buffer.from(n).toString('latin1'),
    }),
  }),
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('leaf'), tie('dir')),
})).tree;

function writeTree(path: Buffer, t: Tree): void {
  switch (t.kind) {
    case 'file':
      writeFileSync(path, t.data);
      chmodSync(path, t.mode);
      break;
    case 'symlink':
      symlinkSync(Buffer.from(t.target), path);
      break;
    case 'dir':
      mkdirSync(path);
      for (const [name, child] of t.entries) writeTree(Buffer.concat([path, Buffer.from('/'), name]), child);
      break;
  }
}

describe('NAR of random trees', () => {
  it('our NAR equals nix-store --dump; parse ∘ serialize round-trips; listing matches Nix', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        treeArb,
        fc.constantFrom(64, 72, 200, 4096, 1 << 20),
        fc.constantFrom('sync' as const, 'async' as const),
        fc.array(fc.nat(), { maxLength: 8 }),
        async (tree, chunkSize, io, cuts) => {
          const root = join(tmp, `rand-${n++}`);
          writeTree(Buffer.from(root), tree);
          const theirs = await nixDump(root);
          const ours = await collect(narChunks(root, { chunkSize, io }));
          expect(ours.equals(theirs)).toBe(true);

          // Parse the NAR split at random points, restore, dump again.
          const dest = `${root}-restored`;
          await restoreNar(rechunk(theirs, cuts), dest);
          expect((await collect(narChunks(dest))).equals(theirs)).toBe(true);

          // Events reassemble the same file contents.
          const evs = await events(rechunk(theirs, cuts));
          const contentBytes = evs.reduce((s, e) => s + (e.type === 'contents' ? e.chunk.length : 0), 0);
          const declared = evs.reduce((s, e) => s + (e.type === 'regular' ? e.size : 0), 0);
          expect(contentBytes).toBe(declared);

          if (n % 5 === 0) {
            const narFile = `${root}.nar`;
            writeFileSync(narFile, theirs);
            const ls = await narListingJson([theirs]);
            expect(ls.toString('latin1')).toBe(`{"version":1,"root":${(await nixNarLs(narFile)).toString('latin1')}}`);
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  it('formatNarListing(narListing(x)) equals narListingJson(x) for UTF-8 names', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.string({ minLength: 1, maxLength: 4 }).filter((s) => !/[/\0]/.test(s) && s !== '.' && s !== '..'), fc.nat(1000), {
          maxKeys: 8,
        }),
        async (files) => {
          const root = mkdtempSync(join(tmp, 'ls-'));
          for (const [name, size] of Object.entries(files)) writeFileSync(join(root, name), Buffer.alloc(size, 1));
          const nar = await collect(narChunks(root));
          expect(formatNarListing(await narListing([nar])).equals(await narListingJson([nar]))).toBe(true);
        },
      ),
      { numRuns: 30 },
    );
  });
});

// ---------------------------------------------------------------------------
// Validation

const s = narString;
const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const file = (contents: string, executable = false): Buffer[] => [
  s('('),
  s('type'),
  s('regular'),
  ...(executable ? [s('executable'), s('')] : []),
  s('contents'),
  s(contents),
  s(')'),
];
const entry = (name: string | Buffer, node: Buffer[]): Buffer[] => [s('entry'), s('('), s('name'), s(name), s('node'), ...node, s(')')];
const dir = (...entries: Buffer[][]): Buffer[] => [s('('), s('type'), s('directory'), ...entries.flat(), s(')')];
const nar = (...node: Buffer[]): Buffer => Buffer.concat([s('nix-archive-1'), ...node]);

async function parseError(bytes: Buffer | Buffer[]): Promise<NixFormatError> {
  try {
    await events(Array.isArray(bytes) ? bytes : [bytes]);
  } catch (e) {
    expect(e).toBeInstanceOf(NixFormatError);
    return e as NixFormatError;
  }
  throw new Error('expected the NAR to be rejected');
}

describe('NAR validation', () => {
  const good = nar(...dir(entry('a', file('hello')), entry('b', file('', true)), entry('c', [s('('), s('type'), s('symlink'), s('target'), s('a'), s(')')])));

  it('accepts a hand-built canonical NAR', async () => {
    const evs = await events([good]);
    expect(evs.map((e) => e.type)).toEqual([
      'directory',
      'regular',
      'contents',
      'regular-end',
      'regular',
      'regular-end',
      'symlink',
      'directory-end',
    ]);
    expect((await parseError(Buffer.concat([good, Buffer.alloc(8)]))).message).toMatch(/trailing data/);
  });

  it('rejects bad magic', async () => {
    expect((await parseError(Buffer.concat([s('nix-archive-2'), ...file('x')]))).message).toMatch(/bad magic/);
    expect((await parseError(Buffer.from('\x1f\x8b\x08\x00 this is gzip, not a NAR'))).message).toMatch(/bad magic/);
    expect((await parseError(Buffer.alloc(0))).message).toMatch(/bad magic|truncated/);
  });

  it('rejects non-zero padding', async () => {
    const bad = Buffer.from(nar(...file('hello')));
    const contentsAt = bad.indexOf('hello');
    bad[contentsAt + 6] = 1;
    expect((await parseError(bad)).message).toMatch(/non-zero padding after file contents/);
    const badToken = Buffer.from(nar(...file('hello')));
    badToken[8 + 13 + 1] = 0x20; // padding of the magic string
    expect((await parseError(badToken)).message).toMatch(/non-zero padding/);
  });

  it('rejects unsorted and duplicate entries', async () => {
    expect((await parseError(nar(...dir(entry('b', file('')), entry('a', file('')))))).message).toMatch(/not sorted/);
    // Bytewise order: 'B' (0x42) sorts before 'a' (0x61), and 'é' (0xc3 0xa9) after 'z'.
    await events([nar(...dir(entry('B', file('')), entry('a', file('')), entry('z', file('')), entry('é', file(''))))]);
    expect((await parseError(nar(...dir(entry('a', file('')), entry('a', file('')))))).message).toMatch(/duplicate entry "a"/);
  });

  it.each([
    ['', /empty name/],
    ['.', /name '\.'/],
    ['..', /name '\.\.'/],
    ['a/b', /contains '\/'/],
    ['/', /contains '\/'/],
    ['a\0b', /NUL/],
    ['x'.repeat(256), /too long/],
  ])('rejects the entry name %j', async (name, re) => {
    expect((await parseError(nar(...dir(entry(name, file('x')))))).message).toMatch(re);
  });

  it('rejects every truncation of a valid NAR', async () => {
    for (let len = 0; len < good.length; len++) {
      const err = await parseError([good.subarray(0, len)]);
      expect(err.message).toMatch(/truncated|bad magic/);
    }
  });

  it('rejects non-canonical or malformed nodes', async () => {
    const cases: [Buffer, RegExp][] = [
      [nar(s('('), s('type'), s('fifo'), s(')')), /unknown node type "fifo"/],
      [nar(s('('), s('type'), s('regular'), s('executable'), s('yes'), s('contents'), s(''), s(')')), /executable marker/],
      [nar(s('('), s('type'), s('regular'), s('contents'), s('x'), s('executable'), s(''), s(')')), /expected '\)'/],
      [nar(s('('), s('type'), s('regular'), s(')')), /expected 'contents'/],
      [nar(s('('), s('type'), s('symlink'), s('target'), s(''), s(')')), /empty symlink target/],
      [nar(s('['), s('type')), /expected '\('/],
      [nar(s('('), s('type'), s('regular'), s('contents'), u64(2 ** 60)), /implausibly large|truncated/],
      [nar(s('('), s('type'), s('directory'), s('entry'), s('('), s('name'), u64(1 << 20)), /entry name too long/],
      [nar(...dir([s('entry'), s('('), s('name'), s('a'), s('node'), ...file('x'), s('junk')])), /expected '\)'/],
    ];
    for (const [bytes, re] of cases) expect((await parseError(bytes)).message).toMatch(re);
  });

  it('reports the byte offset and a stable code', async () => {
    const err = await parseError(nar(...dir(entry('b', file('')), entry('a', file('')))));
    expect(err.code).toBe('NIX_FORMAT');
    expect(err.message).toMatch(/^NAR: .* \(at byte \d+\)$/);
  });

  it('can stop at the end of an embedded NAR and leave the rest', async () => {
    const trailer = Buffer.from('after the NAR');
    const reader = NarByteReader.from(rechunk(Buffer.concat([good, trailer]), [5, 50, good.length - 3]));
    for await (const _ of parseNar(reader, { trailing: 'allow' })) {
      // drain
    }
    expect(reader.offset).toBe(good.length);
    expect(reader.takeBuffered().toString()).toBe(trailer.toString());
  });

  it('refuses to dump unsupported file types', async () => {
    const fifoDir = join(tmp, 'fifo');
    mkdirSync(fifoDir);
    await execFileP('mkfifo', [join(fifoDir, 'pipe')]);
    await expect(collect(narChunks(fifoDir))).rejects.toBeInstanceOf(NarDumpError);
  });
});

// ---------------------------------------------------------------------------
// Memory

describe('NAR memory use', () => {
  it('serialises and hashes a 200 MB file in constant memory', async () => {
    const dir = join(tmp, 'big');
    mkdirSync(dir);
    const big = join(dir, 'zeros');
    await execFileP('truncate', ['-s', '200M', big]);
    writeFileSync(join(dir, 'small'), 'x');
    const rss = () => process.memoryUsage().rss;
    const before = rss();
    let peakHash = before;
    const sampler = setInterval(() => {
      peakHash = Math.max(peakHash, rss());
    }, 5);
    const ours = await narHash(dir);
    clearInterval(sampler);
    peakHash = Math.max(peakHash, rss());
    // Streaming with fresh chunks: garbage until V8 collects, bounded by its external-memory limit.
    let peakStream = before;
    let streamed = 0;
    for await (const c of narChunks(dir)) {
      streamed += c.length;
      peakStream = Math.max(peakStream, rss());
    }
    expect(streamed).toBe(ours.size);
    expect(ours.size).toBeGreaterThan(200 * 1024 * 1024);
    const [sri] = await runNixLines('nix', ['hash', 'path', dir]);
    expect(`sha256-${ours.sha256.toString('base64')}`).toBe(sri);
    expect((peakHash - before) / 2 ** 20).toBeLessThan(24);
    expect((peakStream - before) / 2 ** 20).toBeLessThan(96);
  });
});
