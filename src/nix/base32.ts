import { NixFormatError } from '../errors/index.ts';
import { accepts } from '../util/accepts.ts';

/**
 * Nix's base32: its own alphabet (no e, o, u, t) and its own bit order.
 * Nix prints the *last* 5-bit group first, and the groups are taken
 * little-endian across the byte array, so this is not RFC 4648 and not
 * interchangeable with any library's base32.
 */
export const BASE32_ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

const DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < BASE32_ALPHABET.length; i++) DIGIT[BASE32_ALPHABET.charCodeAt(i)] = i;

/** Characters needed for `byteLength` bytes: ceil(8n / 5). */
export function base32EncodedLength(byteLength: number): number {
  return Math.ceil((byteLength * 8) / 5);
}

/** Bytes encoded by a string of `length` characters, or null when no byte count encodes to that length. */
export function base32DecodedLength(length: number): number | null {
  const n = Math.floor((length * 5) / 8);
  return base32EncodedLength(n) === length ? n : null;
}

export function encodeBase32(bytes: Uint8Array): string {
  const len = base32EncodedLength(bytes.length);
  let out = '';
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    // Bits of the group may straddle bytes i and i+1; past the end counts as zero.
    const lo = bytes[i]! >> j;
    const hi = i + 1 < bytes.length ? bytes[i + 1]! << (8 - j) : 0;
    out += BASE32_ALPHABET[(lo | hi) & 0x1f];
  }
  return out;
}

/** True when decodeBase32 would accept `s`. */
export function isBase32(s: string): boolean {
  return accepts(decodeBase32, s);
}

/**
 * Decodes Nix base32. Rejects characters outside the alphabet, lengths no
 * byte count produces, and non-zero padding bits in the leading character
 * (Nix rejects those too, so every byte string has exactly one encoding).
 */
export function decodeBase32(s: string): Uint8Array {
  const size = base32DecodedLength(s.length);
  if (size === null) throw new NixFormatError('base32', `invalid length ${s.length} for '${s}'`);
  const out = new Uint8Array(size);
  for (let n = 0; n < s.length; n++) {
    const c = s.charCodeAt(s.length - n - 1);
    const digit = c < 128 ? DIGIT[c]! : -1;
    if (digit < 0) {
      throw new NixFormatError('base32', `invalid character '${s[s.length - n - 1]}' in '${s}'`);
    }
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    out[i] = out[i]! | ((digit << j) & 0xff);
    const carry = digit >> (8 - j);
    if (i + 1 < size) out[i + 1] = out[i + 1]! | carry;
    else if (carry !== 0) throw new NixFormatError('base32', `non-zero padding bits in '${s}'`);
  }
  return out;
}
