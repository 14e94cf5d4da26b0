/** One refused authentication, as logged: never the token. */
export interface Rejection {
  /** The peer's address (host:port) as grpc-js reports it. */
  readonly peer: string;
  readonly reason: string;
  readonly method: string;
  /** Refusals from the same host not logged since the last line. */
  readonly suppressed: number;
}

/**
 * Rate-limits refusal lines per peer host: the first refusal from a host is
 * logged at once, later ones at most once per `windowMs` with the count of
 * those skipped, so a misconfigured builder or a scanner cannot flood the log.
 */
export class RejectionLog {
  readonly #last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly sink: (r: Rejection) => void,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  record(peer: string, reason: string, method: string): void {
    const host = peer.replace(/:\d+$/, '');
    const t = this.now();
    const prev = this.#last.get(host);
    if (prev && t - prev.at < this.windowMs) {
      prev.suppressed++;
      return;
    }
    // Bounded: forget hosts quiet for a window once many are remembered.
    if (this.#last.size >= 1024) for (const [h, v] of this.#last) if (t - v.at >= this.windowMs) this.#last.delete(h);
    this.#last.set(host, { at: t, suppressed: 0 });
    this.sink({ peer, reason, method, suppressed: prev?.suppressed ?? 0 });
  }
}
