import { SubstituteUntrustedError } from '../errors/index.ts';
import { exportOrder, writeExport } from '../nix/export.ts';
import type { NarInfo } from '../nix/narinfo.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { countValidSignatures, parsePublicKey, type PublicKey } from '../nix/signing.ts';
import { STORE_DIR } from '../nix/store-path.ts';
import { importVerified } from '../nix/transfer.ts';
import type { Logger } from '../util/logger.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { mapLimit } from '../util/map-limit.ts';
import { openSubstituteSource, type SubstituteSource } from './substitute-source.ts';

/** A path's narinfo and the cache that holds it. */
interface Found {
  readonly source: SubstituteSource;
  readonly info: NarInfo;
}

type Memo = { found: Found | null; until: number };

export interface SubstituterOptions {
  /** `file://dir`, `http(s)://…`, `s3://bucket…` caches and `ssh://` serve peers, asked in order. */
  urls: readonly string[];
  /** `name:base64` keys; a path needs a signature by one of them. */
  trustedPublicKeys: readonly string[];
  pool: WorkerPool;
  /** The runner's store: found paths are imported there. */
  store: NixStoreHandle;
  /** Which paths the runner's store holds. */
  queryValid(paths: readonly string[]): Promise<Set<string>>;
  log: Logger;
  /** How long a found narinfo is trusted to stay (Nix: narinfo-cache-positive-ttl, 30 days). */
  positiveTtlMs?: number;
  /** How long a miss is remembered (Nix: narinfo-cache-negative-ttl, 1 hour). */
  negativeTtlMs?: number;
  now?: () => number;
  awsCredentialsFile?: string;
}

/** Narinfo look-ups in flight at once. */
const LOOKUP_CONCURRENCY = 16;

/**
 * Fetches store paths from binary caches into the runner's store
 * (docs/SUBSTITUTION.md). Narinfo look-ups are memoised per path, found and
 * missing alike, with a TTL, and concurrent look-ups of a path share one
 * request: a path is asked of the caches once per TTL whatever the number of
 * builds that need it. A path is accepted only with a signature by a trusted
 * key; its NAR's hash and size are checked against the narinfo before
 * anything is imported.
 */
export class Substituter {
  private readonly memo = new Map<string, Memo>();
  private readonly inflight = new Map<string, Promise<Found | null>>();
  private readonly keys: PublicKey[];
  private readonly now: () => number;

  private constructor(
    private readonly o: SubstituterOptions,
    private readonly sources: readonly SubstituteSource[],
  ) {
    this.keys = o.trustedPublicKeys.map(parsePublicKey);
    this.now = o.now ?? Date.now;
  }

  static async open(o: SubstituterOptions): Promise<Substituter> {
    const sources: SubstituteSource[] = [];
    for (const url of o.urls) sources.push(await openSubstituteSource(url, o.pool, o.awsCredentialsFile));
    return new Substituter(o, sources);
  }

  close(): Promise<void> {
    return Promise.all(this.sources.map((s) => s.close())).then(() => {});
  }

  /** The path's narinfo from the first cache holding it, or null (memoised, see the class). */
  lookup(path: string): Promise<Found | null> {
    const m = this.memo.get(path);
    if (m && m.until > this.now()) return Promise.resolve(m.found);
    let p = this.inflight.get(path);
    if (!p) {
      p = this.ask(path).finally(() => this.inflight.delete(path));
      this.inflight.set(path, p);
    }
    return p;
  }

  private async ask(path: string): Promise<Found | null> {
    let found: Found | null = null;
    for (const source of this.sources) {
      const info = await source.narInfo(path);
      if (info) {
        found = { source, info };
        break;
      }
    }
    this.memo.set(path, { found, until: this.now() + (found ? (this.o.positiveTtlMs ?? 30 * 86400_000) : (this.o.negativeTtlMs ?? 3600_000)) });
    return found;
  }

  /** Remembers `path` as not substitutable (a refused cache entry) for the negative TTL. */
  private refuse(path: string): void {
    this.memo.set(path, { found: null, until: this.now() + (this.o.negativeTtlMs ?? 3600_000) });
  }

  /**
   * Makes `paths` valid in the runner's store from the caches, with the
   * closure they need. False when some path of the closure is in no cache
   * (nothing imported); throws when a cache's entry is refused (untrusted
   * signature, NAR not matching its narinfo): nothing is imported then either.
   */
  async substitute(paths: readonly string[]): Promise<boolean> {
    const infos = new Map<string, Found>();
    let wanted = [...new Set(paths)];
    while (wanted.length > 0) {
      const valid = await this.o.queryValid(wanted);
      const missing = wanted.filter((p) => !valid.has(p) && !infos.has(p));
      const found = await mapLimit(missing, LOOKUP_CONCURRENCY, (p) => this.lookup(p));
      const next = new Set<string>();
      for (let i = 0; i < missing.length; i++) {
        const f = found[i];
        if (!f) return false;
        infos.set(missing[i]!, f);
        for (const r of f.info.references) {
          const full = `${STORE_DIR}/${r}`;
          if (!infos.has(full)) next.add(full);
        }
      }
      wanted = [...next];
    }
    if (infos.size === 0) return true;
    const refsOf = (p: string) => infos.get(p)!.info.references.map((r) => `${STORE_DIR}/${r}`).filter((r) => r !== p);
    for (const [p, f] of infos) {
      // Nix's rule: a source marked trusted needs no signature; any other, one by a key of trustedPublicKeys.
      if (f.source.trusted) continue;
      const signed = countValidSignatures(this.keys, { storePath: p, narHash: f.info.narHash, narSize: f.info.narSize, references: f.info.references.map((r) => `${STORE_DIR}/${r}`) }, f.info.sigs);
      if (signed === 0) {
        this.refuse(p);
        throw new SubstituteUntrustedError(f.source.url, p);
      }
    }
    const order = exportOrder(infos.keys(), refsOf);
    const self = this;
    const entries = (async function* () {
      for (const p of order) {
        const f = infos.get(p)!;
        yield { path: p, references: f.info.references.map((r) => `${STORE_DIR}/${r}`), deriver: f.info.deriver ? `${STORE_DIR}/${f.info.deriver}` : null, nar: [await self.nar(f)] };
      }
    })();
    const expected = new Map([...infos].map(([p, f]) => [p, { narHash: f.info.narHash, narSize: f.info.narSize }]));
    try {
      await importVerified(this.o.store, writeExport(entries), expected);
    } catch (e) {
      for (const p of infos.keys()) this.refuse(p);
      throw e;
    }
    return true;
  }

  /** A path's NAR from its source, uncompressed. */
  private nar(f: Found): Promise<Buffer> {
    return f.source.nar(f.info);
  }
}
