/**
 * Groups single-key look-ups made in the same tick into one call (one SQL
 * query with an array parameter, one `nix-store` invocation), so loading a
 * 300k-step queue costs thousands of round trips instead of hundreds of
 * thousands. Batches are capped so no query grows without bound.
 */
export class Batcher<K, V> {
  private pending: { key: K; resolve: (v: V) => void; reject: (e: unknown) => void }[] = [];
  private scheduled = false;

  constructor(
    private readonly fetch: (keys: K[]) => Promise<Map<K, V>>,
    private readonly fallback: V,
    private readonly maxBatch = 1000,
  ) {}

  load(key: K): Promise<V> {
    return new Promise((resolve, reject) => {
      this.pending.push({ key, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const all = this.pending;
    this.pending = [];
    for (let i = 0; i < all.length; i += this.maxBatch) {
      const chunk = all.slice(i, i + this.maxBatch);
      const keys = [...new Set(chunk.map((p) => p.key))];
      this.fetch(keys).then(
        (found) => {
          for (const p of chunk) p.resolve(found.has(p.key) ? found.get(p.key)! : this.fallback);
        },
        (err) => {
          for (const p of chunk) p.reject(err);
        },
      );
    }
  }
}
