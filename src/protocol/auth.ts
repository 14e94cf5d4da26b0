import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { status, type Metadata } from '@grpc/grpc-js';
import { ConfigError, ProtocolError } from '../errors/index.ts';

/** The one message every refused call gets; it never says which part was wrong. */
export const UNAUTHENTICATED_MESSAGE = 'missing or invalid bearer token';
/** Under mutual TLS, for a connection without a client certificate the client CA signed. */
export const CLIENT_CERTIFICATE_MESSAGE = "no client certificate signed by the runner's client CA";

const BEARER = /^bearer\s+(\S+)\s*$/i;

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/**
 * Builder bearer tokens. Only SHA-256 digests are kept; a presented token is
 * hashed and compared with every known digest in constant time, so neither
 * the content nor the length of a token leaks through timing, and a match
 * does not end the loop early.
 */
export class TokenAuth {
  readonly #digests: readonly Buffer[];

  constructor(tokens: readonly string[], what = 'builder') {
    if (tokens.length === 0) throw new ConfigError(`no ${what} tokens configured`);
    this.#digests = tokens.map((t) => {
      if (t.length === 0) throw new ConfigError(`a ${what} token is empty`);
      return digest(t);
    });
  }

  /** One token per file, surrounding whitespace trimmed. Errors name the file, never its content. */
  static async fromFiles(tokenPaths: readonly string[], what = 'builder'): Promise<TokenAuth> {
    const tokens: string[] = [];
    for (const p of tokenPaths) {
      let text: string;
      try {
        text = await readFile(p, 'utf8');
      } catch (cause) {
        throw new ConfigError(`cannot read ${what} token file ${p}`, { cause });
      }
      const token = text.trim();
      if (token.length === 0) throw new ConfigError(`${what} token file ${p} is empty`);
      tokens.push(token);
    }
    return new TokenAuth(tokens, what);
  }

  /** Whether `token` is one of the configured tokens. */
  verify(token: string): boolean {
    const presented = digest(token);
    let ok = false;
    for (const d of this.#digests) ok = timingSafeEqual(presented, d) || ok;
    return ok;
  }

  /** Whether an `Authorization: Bearer …` value holds a known token. */
  verifyHeader(value: unknown): boolean {
    if (typeof value !== 'string') return false;
    const m = BEARER.exec(value);
    return m?.[1] !== undefined && this.verify(m[1]);
  }

  /** Whether the call's `authorization: Bearer …` metadata holds a known token. */
  verifyMetadata(metadata: Metadata): boolean {
    const values = metadata.get('authorization');
    return values.length === 1 && this.verifyHeader(values[0]);
  }

  /** Why the call's token is refused (for the runner's log only), or undefined when it is known. */
  refusal(metadata: Metadata): string | undefined {
    if (this.verifyMetadata(metadata)) return undefined;
    return metadata.get('authorization').length === 0 ? 'no bearer token' : 'unknown bearer token';
  }

  /** Throws UNAUTHENTICATED unless the call carries a known token. */
  check(metadata: Metadata): void {
    if (!this.verifyMetadata(metadata)) throw new ProtocolError(status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);
  }
}
