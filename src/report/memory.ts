import { RkError } from '../errors.js';
import {
  type Alert,
  type FlagFilter,
  type FlagInput,
  type FlagPage,
  type FlagRecord,
  type FlagState,
  flagId,
  matches,
  type RaiseResult,
  type ReportStore,
  seqOfToken,
  TOP_BUCKET_MS,
  TOP_RETENTION_MS,
  type TopBy,
  type TopEntry,
  type Totals,
  topOrder,
  totalOf,
} from './types.js';

const pairKey = (key: string, signal: string): string => `${key}\u0000${signal}`;

/** Report state of a single instance (the memory limiter store's companion). */
export class MemoryReportStore implements ReportStore {
  private seq = 0;
  private readonly flags = new Map<string, FlagRecord>();
  /** key+signal → id of its open flag. */
  private readonly open = new Map<string, string>();
  /** key+signal → when its last flag was closed by review. */
  private readonly closed = new Map<string, number>();
  private readonly once = new Map<string, number>();
  private readonly listeners = new Set<(alert: Alert) => void>();
  private readonly totals = new Map<number, Map<string, Totals>>();

  constructor(private readonly now: () => number = Date.now) {}

  async raiseFlag(input: FlagInput): Promise<RaiseResult> {
    const pair = pairKey(input.key, input.signal);
    const openId = this.open.get(pair);
    const current = openId ? this.flags.get(openId) : undefined;
    if (current) {
      Object.assign(current, {
        observed: input.observed,
        threshold: input.threshold,
        windowMs: input.windowMs,
        detail: input.detail,
        lastSeenMs: Math.max(current.lastSeenMs, input.atMs),
      });
      return { outcome: 'updated', flag: { ...current } };
    }
    if ((this.closed.get(pair) ?? Number.NEGATIVE_INFINITY) >= input.sinceMs)
      return { outcome: 'suppressed' };
    const flag: FlagRecord = {
      id: flagId(++this.seq),
      key: input.key,
      account: input.account,
      signal: input.signal,
      observed: input.observed,
      threshold: input.threshold,
      windowMs: input.windowMs,
      firstSeenMs: input.atMs,
      lastSeenMs: input.atMs,
      state: 'open',
      note: '',
      reviewedBy: '',
      reviewedAtMs: 0,
      detail: input.detail,
    };
    this.flags.set(flag.id, flag);
    this.open.set(pair, flag.id);
    return { outcome: 'created', flag: { ...flag } };
  }

  async getFlag(id: string): Promise<FlagRecord | undefined> {
    const f = this.flags.get(id);
    return f ? { ...f } : undefined;
  }

  async listFlags(filter: FlagFilter, pageSize: number, pageToken: string): Promise<FlagPage> {
    if (pageToken) seqOfToken(pageToken);
    const ids = [...this.flags.keys()].sort().reverse();
    const flags: FlagRecord[] = [];
    let nextPageToken = '';
    for (const id of ids) {
      if (pageToken && id >= pageToken) continue;
      const f = this.flags.get(id)!;
      if (!matches(f, filter)) continue;
      if (flags.length === pageSize) {
        nextPageToken = flags[flags.length - 1]!.id;
        break;
      }
      flags.push({ ...f });
    }
    return { flags, nextPageToken };
  }

  async reviewFlag(
    id: string,
    state: Exclude<FlagState, 'open'>,
    note: string,
    reviewer: string,
    atMs: number,
  ): Promise<FlagRecord> {
    const f = this.flags.get(id);
    if (!f) throw new RkError('NOT_FOUND', `flag ${id} not found`, 'flag_id');
    const pair = pairKey(f.key, f.signal);
    if (this.open.get(pair) === id) {
      this.open.delete(pair);
      this.closed.set(pair, atMs);
    }
    Object.assign(f, { state, note, reviewedBy: reviewer, reviewedAtMs: atMs });
    return { ...f };
  }

  async claimOnce(id: string, ttlMs: number): Promise<boolean> {
    const now = this.now();
    const until = this.once.get(id);
    if (until !== undefined && until > now) return false;
    this.once.set(id, now + ttlMs);
    if (this.once.size > 10_000) for (const [k, u] of this.once) if (u <= now) this.once.delete(k);
    return true;
  }

  async publish(alert: Alert): Promise<void> {
    for (const l of this.listeners) l(alert);
  }

  /** Listeners of this instance (WatchAlerts streams). */
  get subscribers(): number {
    return this.listeners.size;
  }

  subscribe(listener: (alert: Alert) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async addTotals(bucketStartMs: number, totals: readonly Totals[]): Promise<void> {
    let bucket = this.totals.get(bucketStartMs);
    if (!bucket) {
      bucket = new Map();
      this.totals.set(bucketStartMs, bucket);
      const oldest = bucketStartMs - TOP_RETENTION_MS;
      for (const start of this.totals.keys()) if (start < oldest) this.totals.delete(start);
    }
    for (const t of totals) {
      const cur = bucket.get(t.key);
      if (cur) {
        cur.account = t.account;
        cur.requests += t.requests;
        cur.tokens += t.tokens;
        cur.spendMicros += t.spendMicros;
      } else bucket.set(t.key, { ...t });
    }
  }

  async topKeys(by: TopBy, fromMs: number, toMs: number, limit: number): Promise<TopEntry[]> {
    const sum = new Map<string, TopEntry>();
    for (const [start, bucket] of this.totals) {
      if (start + TOP_BUCKET_MS <= fromMs || start > toMs) continue;
      for (const t of bucket.values()) {
        const v = totalOf(t, by);
        const e = sum.get(t.key);
        if (e) e.value += v;
        else sum.set(t.key, { key: t.key, account: t.account, value: v });
      }
    }
    return [...sum.values()]
      .filter((e) => e.value > 0)
      .sort(topOrder)
      .slice(0, limit);
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
