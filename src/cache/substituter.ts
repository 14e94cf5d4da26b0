import { S3RequestError, ServeConnectionError, ServeProtocolError, SshHostKeyError, SubstituterUnreachableError, SubstituteUntrustedError } from '../errors/index.ts';
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

/** A substituter's standing (Nix's disabled binary caches): skipped until `disabledUntil` after a failure. */
interface Health {
  disabledUntil: number;
  /** Times it failed and was disabled. */
  failures: number;
  /** Look-ups that skipped it while disabled. */
  skipped: number;
  /** Disabled since it last answered: its next answer is logged. */
  down: boolean;
}

/** One substituter's totals (`hydrant_substituter_*` metrics). */
export interface SubstituterStats {
  /** The entry without its query (which may name key files). */
  readonly substituter: string;
  readonly failures: number;
  readonly skipped: number;
  readonly disabled: boolean;
}

/** Failures of the source itself (it could not be asked), as opposed to what it answered. */
function isSourceFailure(e: unknown): e is Error & { code: string } {
  return e instanceof SubstituterUnreachableError || e instanceof ServeConnectionError || e instanceof ServeProtocolError || e instanceof SshHostKeyError || e instanceof S3RequestError;
}

/** The source a failure of nar() came from. */
const failedSources = new WeakMap<Error, SubstituteSource>();
const failedSource = (e: Error): SubstituteSource | undefined => failedSources.get(e);

const display = (url: string): string => url.replace(/\?.*$/, '');

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
  /**
   * How long a substituter that failed (unreachable, an HTTP error, a broken
   * serve connection) is skipped before it is asked again
   * (`substituterBackoffInS`, default 60 s: Nix disables an HTTP binary cache
   * for 60 s).
   */
  backoffMs?: number;
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
 * key, or from a substituter marked `trusted`; its NAR's hash and size are
 * checked against the narinfo before anything is imported. A substituter
 * that fails is skipped for the backoff period (docs/CACHES.md).
 */
export class Substituter {
  private readonly memo = new Map<string, Memo>();
  private readonly inflight = new Map<string, Promise<Found | null>>();
  private readonly keys: PublicKey[];
  private readonly now: () => number;
  private readonly health: Map<SubstituteSource, Health>;

  private constructor(
    private readonly o: SubstituterOptions,
    private readonly sources: readonly SubstituteSource[],
  ) {
    this.keys = o.trustedPublicKeys.map(parsePublicKey);
    this.now = o.now ?? Date.now;
    this.health = new Map(sources.map((src) => [src, { disabledUntil: 0, failures: 0, skipped: 0, down: false }]));
  }

  /**
   * Opens the sources; one contacted at start (s3://) that fails there is
   * skipped for the backoff period with one warning line, and `serve` goes
   * on without it until it answers (docs/CACHES.md).
   */
  static async open(o: SubstituterOptions): Promise<Substituter> {
    const sources: SubstituteSource[] = [];
    for (const url of o.urls) sources.push(await openSubstituteSource(url, o.pool, o.awsCredentialsFile));
    const s = new Substituter(o, sources);
    for (const source of sources) {
      try {
        await source.probe?.();
      } catch (e) {
        if (!isSourceFailure(e)) {
          await s.close();
          throw e;
        }
        s.disable(source, e, 'substituter unreachable at start; skipping it for the backoff period');
      }
    }
    return s;
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

  /**
   * Asks the sources in order. One that fails is skipped for the backoff
   * period (Nix's `SubstituterDisabled`: the next substituter is asked), and
   * so is one still in its period; a miss is then remembered only until the
   * first of them is asked again, not for the negative TTL.
   */
  private async ask(path: string): Promise<Found | null> {
    let found: Found | null = null;
    let retryAt = Infinity;
    for (const source of this.sources) {
      const h = this.health.get(source)!;
      if (h.disabledUntil > this.now()) {
        h.skipped++;
        retryAt = Math.min(retryAt, h.disabledUntil);
        continue;
      }
      let info: NarInfo | null;
      try {
        info = await source.narInfo(path);
      } catch (e) {
        if (!isSourceFailure(e)) throw e;
        this.disable(source, e);
        retryAt = Math.min(retryAt, h.disabledUntil);
        continue;
      }
      this.answered(source);
      if (info) {
        found = { source, info };
        break;
      }
    }
    const now = this.now();
    const until = found ? now + (this.o.positiveTtlMs ?? 30 * 86400_000) : Math.min(now + (this.o.negativeTtlMs ?? 3600_000), retryAt);
    this.memo.set(path, { found, until });
    return found;
  }

  /** A source failed: skipped for the backoff period, with one line and one count per period. */
  private disable(source: SubstituteSource, e: Error & { code: string }, msg = 'substituter failed; skipping it for the backoff period'): void {
    const h = this.health.get(source)!;
    const now = this.now();
    if (h.disabledUntil > now) return; // a look-up in flight when it was disabled
    const backoffMs = this.o.backoffMs ?? 60_000;
    h.disabledUntil = now + backoffMs;
    h.failures++;
    h.down = true;
    this.o.log.warn({ substituter: display(source.url), code: e.code, err: e.message, backoffS: backoffMs / 1000 }, msg);
  }

  private answered(source: SubstituteSource): void {
    const h = this.health.get(source)!;
    if (!h.down) return;
    h.down = false;
    this.o.log.info({ substituter: display(source.url) }, 'substituter answers again');
  }

  /** Each substituter's failures, skipped look-ups and whether it is in its backoff period now. */
  stats(): SubstituterStats[] {
    const now = this.now();
    return this.sources.map((src) => {
      const h = this.health.get(src)!;
      return { substituter: display(src.url), failures: h.failures, skipped: h.skipped, disabled: h.disabledUntil > now };
    });
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
      if (isSourceFailure(e)) {
        // The cache broke off, its entries were not refused: the paths are asked again (it being skipped meanwhile).
        for (const [p, f] of infos) if (f.source === failedSource(e)) this.memo.delete(p);
      } else {
        for (const p of infos.keys()) this.refuse(p);
      }
      throw e;
    }
    return true;
  }

  /** A path's NAR from its source, uncompressed; a failing source is disabled. */
  private async nar(f: Found): Promise<Buffer> {
    try {
      return await f.source.nar(f.info);
    } catch (e) {
      if (isSourceFailure(e)) {
        this.disable(f.source, e);
        failedSources.set(e, f.source);
      }
      throw e;
    }
  }
}
