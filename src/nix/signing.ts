import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';
import { NixFormatError } from '../errors/index.ts';
import { type Hash, parseHash } from './hash.ts';
import { parseStorePath, sortStorePaths } from './store-path.ts';

/**
 * Ed25519 keys in Nix's text format (libsodium layout):
 *   secret `name:base64(32-byte seed ‖ 32-byte public key)`
 *   public `name:base64(32-byte public key)`
 * Ed25519 signing is deterministic, so node:crypto signs byte-identically to Nix.
 */
export interface SecretKey {
  readonly name: string;
  readonly seed: Uint8Array;
  readonly publicKey: PublicKey;
  readonly keyObject: KeyObject;
}

export interface PublicKey {
  readonly name: string;
  readonly key: Uint8Array;
  readonly keyObject: KeyObject;
}

const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

function b64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url');
}

/** Splits `name:base64` and decodes, checking the byte length. */
function splitKey(text: string, kind: string, bytes: number): { name: string; data: Buffer } {
  const s = text.trim();
  const colon = s.indexOf(':');
  if (colon <= 0) throw new NixFormatError(`${kind} key`, 'expected <name>:<base64>');
  const name = s.slice(0, colon);
  const b64 = s.slice(colon + 1);
  const data = B64_RE.test(b64) && b64.length % 4 === 0 ? Buffer.from(b64, 'base64') : null;
  if (!data || data.length !== bytes) {
    throw new NixFormatError(`${kind} key`, `key '${name}' must be base64 of ${bytes} bytes`);
  }
  return { name, data };
}

function publicKeyFromBytes(name: string, key: Uint8Array): PublicKey {
  const keyObject = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(key) }, format: 'jwk' });
  return { name, key: Uint8Array.from(key), keyObject };
}

// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): fixed prefix, then the 32 bytes.
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

function secretKeyFromSeed(name: string, seed: Uint8Array): SecretKey {
  const der = Buffer.concat([PKCS8_ED25519_PREFIX, seed]);
  const keyObject = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  const jwk = createPublicKey(keyObject).export({ format: 'jwk' });
  const pub = Buffer.from(jwk.x!, 'base64url');
  return { name, seed: Uint8Array.from(seed), publicKey: publicKeyFromBytes(name, pub), keyObject };
}

export function parseSecretKey(text: string): SecretKey {
  const { name, data } = splitKey(text, 'secret', 64);
  const sk = secretKeyFromSeed(name, data.subarray(0, 32));
  // libsodium signs with the embedded public half; a mismatch would yield signatures no one accepts.
  if (!Buffer.from(sk.publicKey.key).equals(data.subarray(32))) {
    throw new NixFormatError('secret key', `key '${name}': public half does not match the seed`);
  }
  return sk;
}

export function parsePublicKey(text: string): PublicKey {
  const { name, data } = splitKey(text, 'public', 32);
  return publicKeyFromBytes(name, data);
}

export function formatSecretKey(sk: SecretKey): string {
  return `${sk.name}:${Buffer.concat([sk.seed, sk.publicKey.key]).toString('base64')}`;
}

export function formatPublicKey(pk: PublicKey): string {
  return `${pk.name}:${Buffer.from(pk.key).toString('base64')}`;
}

function checkKeyName(name: string): void {
  if (name === '' || /[:\s]/.test(name)) throw new NixFormatError('secret key', `bad key name '${name}'`);
}

/** A fresh key pair, like `nix-store --generate-binary-cache-key`. */
export function generateSecretKey(name: string): SecretKey {
  checkKeyName(name);
  const { privateKey } = generateKeyPairSync('ed25519');
  const d = privateKey.export({ format: 'jwk' }).d!;
  return secretKeyFromSeed(name, Buffer.from(d, 'base64url'));
}

export function secretKeyFromBytes(name: string, seed: Uint8Array): SecretKey {
  checkKeyName(name);
  if (seed.length !== 32) throw new NixFormatError('secret key', 'seed must be 32 bytes');
  return secretKeyFromSeed(name, seed);
}

export interface PathInfoForSigning {
  storePath: string;
  narHash: Hash | string;
  narSize: number;
  /** Full store paths. */
  references: Iterable<string>;
}

/**
 * The text Nix signs: `1;<path>;<sha256:base32 nar hash>;<nar size>;<refs>`
 * with references as full paths, sorted, comma-separated.
 */
export function fingerprintPath(info: PathInfoForSigning): string {
  parseStorePath(info.storePath);
  const hash = typeof info.narHash === 'string' ? parseHash(info.narHash) : info.narHash;
  if (hash.algo !== 'sha256') throw new NixFormatError('fingerprint', 'NAR hash must be sha256');
  if (!Number.isSafeInteger(info.narSize) || info.narSize <= 0) {
    throw new NixFormatError('fingerprint', `cannot fingerprint '${info.storePath}' without a NAR size`);
  }
  const refs = sortStorePaths(info.references);
  for (const r of refs) parseStorePath(r);
  return `1;${info.storePath};${hash.format('base32')};${info.narSize};${refs.join(',')}`;
}

/** `keyname:base64(signature)` over the fingerprint. */
export function signFingerprint(sk: SecretKey, fingerprint: string): string {
  const sig = sign(null, Buffer.from(fingerprint, 'utf8'), sk.keyObject);
  return `${sk.name}:${sig.toString('base64')}`;
}

export function signPath(sk: SecretKey, info: PathInfoForSigning): string {
  return signFingerprint(sk, fingerprintPath(info));
}

/**
 * True when `sig` is a valid signature of the fingerprint by the key of that
 * name among `keys`. Unknown key names and malformed signatures are false.
 */
export function verifyFingerprint(keys: Iterable<PublicKey>, fingerprint: string, sig: string): boolean {
  const colon = sig.indexOf(':');
  if (colon <= 0) return false;
  const name = sig.slice(0, colon);
  const b64 = sig.slice(colon + 1);
  if (!B64_RE.test(b64)) return false;
  const raw = Buffer.from(b64, 'base64');
  if (raw.length !== 64) return false;
  for (const key of keys) {
    if (key.name === name && verify(null, Buffer.from(fingerprint, 'utf8'), key.keyObject, raw)) return true;
  }
  return false;
}

/** Number of distinct trusted keys with a valid signature among `sigs`. */
export function countValidSignatures(keys: Iterable<PublicKey>, info: PathInfoForSigning, sigs: Iterable<string>): number {
  const fp = fingerprintPath(info);
  const list = [...keys];
  const signers = new Set<string>();
  for (const sig of sigs) if (verifyFingerprint(list, fp, sig)) signers.add(sig.slice(0, sig.indexOf(':')));
  return signers.size;
}
