/**
 * The check a resolved CA step's outputs go through (src/nix/ca-output.ts):
 * the path computed from an output's content equals the one Nix 2.8 built
 * it at, with a self-reference, a reference to another CA output, and flat
 * hashing; a changed byte gives another path.
 */
import { createHash, randomUUID } from 'node:crypto';
import { chmodSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkFloatingOutput, FloatingNarCheck, HashModulo } from '../../src/nix/ca-output.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { parseStorePath } from '../../src/nix/store-path.ts';
import { runNix, runNixLines } from '../helpers/nix.ts';
import { tempDir } from './util.ts';

const EXPR = `{ nonce }:
let
  mk = { name, script, mode ? "recursive" }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    __contentAddressed = true;
    outputHashMode = mode;
    outputHashAlgo = "sha256";
  };
  dep = mk { name = "ca-check-dep"; script = "echo dep-\${nonce} > $out"; };
  selfref = mk { name = "ca-check-self"; script = "/bin/mkdir $out; echo $out > $out/self; echo $out$out > $out/twice; echo \${dep} > $out/dep"; };
  flat = mk { name = "ca-check-flat"; script = "echo flat-\${nonce} > $out"; mode = "flat"; };
in { inherit dep selfref flat; }
`;

interface Built {
  drv: string;
  out: string;
  ca: string;
  references: string[];
}

describe('checkFloatingOutput against Nix 2.8', () => {
  const dir = tempDir('hydrant-ca-output-');
  const built = new Map<string, Built>();
  beforeAll(async () => {
    const file = join(dir, 'ca.nix');
    writeFileSync(file, EXPR);
    const names = ['dep', 'selfref', 'flat'];
    const drvs = await runNixLines('nix-instantiate', [file, '--argstr', 'nonce', randomUUID(), ...names.flatMap((n) => ['-A', n])]);
    const outs = await runNixLines('nix-store', ['--realise', ...drvs]);
    for (const [i, n] of names.entries()) {
      const out = outs[i]!;
      const [info] = JSON.parse((await runNix('nix', ['path-info', '--json', out])).stdout.toString()) as { ca: string; references: string[] }[];
      built.set(n, { drv: drvs[i]!, out, ca: info!.ca, references: info!.references });
    }
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const check = (b: Built, fsPath = b.out) => {
    const o = parseDerivation(readFileSync(b.drv)).outputs.get('out')!;
    return checkFloatingOutput({
      storePath: b.out,
      fsPath,
      references: b.references,
      drvName: parseStorePath(b.drv).name.slice(0, -4),
      outputName: 'out',
      method: o.hashAlgo.startsWith('r:') ? 'recursive' : 'flat',
      algo: 'sha256',
    });
  };

  it('gives the path and content address Nix gave, with and without self-references, recursive and flat', async () => {
    const self = built.get('selfref')!;
    expect(self.references).toContain(self.out);
    expect(self.references).toContain(built.get('dep')!.out);
    for (const b of built.values()) {
      const r = await check(b);
      expect(r.expected, b.out).toBe(b.out);
      expect(r.ok).toBe(true);
      expect(b.ca).toBe(`fixed:${b.ca.startsWith('fixed:r:') ? 'r:' : ''}${r.hash.format('base32')}`);
    }
  });

  it('gives another path when one byte of the content changed, or a reference is left out', async () => {
    const self = built.get('selfref')!;
    const copy = join(dir, 'copy');
    cpSync(self.out, copy, { recursive: true });
    writeFileSync(join(copy, 'dep'), `${built.get('dep')!.out.replace(/.$/, 'x')}\n`);
    const tampered = await check(self, copy);
    expect(tampered.ok).toBe(false);
    expect(tampered.expected).not.toBe(self.out);
    const r = await check({ ...self, references: self.references.filter((p) => p !== self.out) });
    expect(r.ok).toBe(false);
  });
  /** FloatingNarCheck over the NAR of `fsPath`, cut into chunks of `size` bytes (as an upload streams it). */
  const checkNar = async (b: Built, fsPath = b.out, size = 7) => {
    const o = parseDerivation(readFileSync(b.drv)).outputs.get('out')!;
    const c = new FloatingNarCheck({
      storePath: b.out,
      references: b.references,
      drvName: parseStorePath(b.drv).name.slice(0, -4),
      outputName: 'out',
      method: o.hashAlgo.startsWith('r:') ? 'recursive' : 'flat',
      algo: 'sha256',
    });
    const nar: Buffer[] = [];
    for await (const chunk of narChunks(fsPath)) nar.push(chunk);
    const all = Buffer.concat(nar);
    for (let i = 0; i < all.length; i += size) c.update(all.subarray(i, i + size));
    return c.result();
  };

  it('checks an output the same from its NAR as it streams (an upload), whatever the chunking', async () => {
    for (const b of built.values()) {
      const fromFiles = await check(b);
      for (const size of [1, 7, 96, 1 << 20]) {
        const r = await checkNar(b, b.out, size);
        expect(r.ok, `${b.out} in ${size}-byte chunks`).toBe(true);
        expect(r.expected).toBe(fromFiles.expected);
        expect(r.hash.format('base32')).toBe(fromFiles.hash.format('base32'));
      }
    }
  });

  it('refuses from the NAR a tampered output, a dropped self-reference, and a flat output that is not a plain file', async () => {
    const self = built.get('selfref')!;
    const copy = join(dir, 'copy-nar');
    cpSync(self.out, copy, { recursive: true });
    writeFileSync(join(copy, 'dep'), `${built.get('dep')!.out.replace(/.$/, 'x')}\n`);
    expect((await checkNar(self, copy)).ok).toBe(false);
    expect((await checkNar({ ...self, references: self.references.filter((p) => p !== self.out) })).ok).toBe(false);
    const flat = built.get('flat')!;
    const exe = join(dir, 'flat-exe');
    cpSync(flat.out, exe);
    chmodSync(exe, 0o755);
    expect((await checkNar(flat, exe)).ok).toBe(false);
    // Same bytes as a directory's file: not the NAR of a flat output.
    const inDir = join(dir, 'flat-dir');
    mkdirSync(inDir);
    cpSync(flat.out, join(inDir, 'f'));
    expect((await checkNar(flat, inDir)).ok).toBe(false);
  });
});

describe('HashModulo', () => {
  it('hashes the same however the bytes are split into chunks', () => {
    const mod = 'abcd';
    const bytesArb = fc.array(fc.oneof(fc.constantFrom('abcd', 'ab', 'cd', 'a', 'x', 'abcdabcd'), fc.string({ maxLength: 5 })), { maxLength: 20 }).map((xs) => Buffer.from(xs.join('')));
    fc.assert(
      fc.property(bytesArb, fc.array(fc.nat(), { maxLength: 6 }), (bytes, cuts) => {
        const whole = new HashModulo('sha256', mod);
        whole.update(bytes);
        const split = new HashModulo('sha256', mod);
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        let last = 0;
        for (const p of [...points, bytes.length]) {
          split.update(bytes.subarray(last, p));
          last = p;
        }
        expect(split.digest().toBase16()).toBe(whole.digest().toBase16());
      }),
    );
  });

  it('zeroes each occurrence and appends its offset, as Nix does', () => {
    const h = new HashModulo('sha256', 'ab');
    h.update(Buffer.from('xa'));
    h.update(Buffer.from('byab'));
    const ref = Buffer.from('x\0\0y\0\0|1|4', 'latin1');
    expect(h.digest().toBase16()).toBe(createHash('sha256').update(ref).digest('hex'));
  });
});
