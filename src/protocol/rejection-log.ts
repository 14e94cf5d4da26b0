/** One refused authentication, as logged: never the token. */
export interface Rejection {
  /** The peer's address (host:port) as grpc-js reports it. */
  readonly peer: string;
  readonly reason: string;
  readonly method: string;
  /** Refusals from the same host not logged since its last line. */
  readonly suppressed: number;
}

/**
 * Rate-limits refusal lines per peer host: the first `burst` refusals from a
 * host in a window are logged at once, later ones only counted and reported
 * with the host's next line, so a misconfigured builder or a scanner cannot
 * flood the log while a single refusal is always seen.
 */
export class RejectionLog {
  readonly #hosts = new Map<string, { since: number; logged: number; suppressed: number }>();

  constructor(
    private readonly sink: (r: Rejection) => void,
    private readonly burst = 5,
    private readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  record(peer: string, reason: string, method: string): void {
    const host = peer.replace(/:\d+$/, '');
    const t = this.now();
    let h = this.#hosts.get(host);
    if (h && t - h.since >= this.windowMs) {
      h.since = t;
      h.logged = 0;
    }
    if (!h) {
      // Bounded: forget hosts whose window has passed once many are remembered.
      if (this.#hosts.size >= 1024) for (const [k, v] of this.#hosts) if (t - v.since >= this.windowMs) this.#hosts.delete(k);
      h = { since: t, logged: 0, suppressed: 0 };
      this.#hosts.set(host, h);
    }
    if (h.logged >= this.burst) {
      h.suppressed++;
      return;
    }
    h.logged++;
    const suppressed = h.suppressed;
    h.suppressed = 0;
    this.sink({ peer, reason, method, suppressed });
  }
}
