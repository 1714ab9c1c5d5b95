import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import { registry } from '../metrics.js';
import {
  type Bucket,
  crossedShares,
  emptyBucket,
  evaluateAccount,
  evaluateKey,
  type SharedCounts,
  type SignalKind,
  type SignalSettings,
  type Trip,
} from '../policy/signals.js';
import type { DecisionEvent, ExpiredEvent, ReportEvent, SettledEvent } from './events.js';
import { type Alert, type ReportStore, TOP_BUCKET_MS, type Totals } from './types.js';

export const flagsRaised = new Counter({
  name: 'ratekeeper_report_flags_total',
  help: 'Abuse flags opened for review, by signal (one per key and signal while open).',
  labelNames: ['signal'] as const,
  registers: [registry],
});

export const crossingsSent = new Counter({
  name: 'ratekeeper_report_threshold_crossings_total',
  help: 'Budget threshold crossings alerted (each once a period across instances), by metric.',
  labelNames: ['metric'] as const,
  registers: [registry],
});

interface KeyState {
  account: string;
  /** Oldest first; at most the longest window's worth. */
  buckets: Bucket[];
  /** Latest Retry-After given to this key, Unix ms; a denied call before it is an early retry. */
  retryUntilMs: number;
  /** When each signal was last sent to the store, so a held signal writes once a bucket, not per request. */
  raisedAt: Map<SignalKind, number>;
  lastMs: number;
  /** The key's store identity, when known (shared counters). */
  ref?: string;
  /** Early retries seen since the last flush, to add to the shared count. */
  pendingEarly: number;
  /** The store's latest counts for this key, all instances together. */
  shared: SharedCounts;
}

/** Counters in the limiter store, shared by every instance. */
export interface SharedCounter {
  /** Adds n to the key's count over windowMs; resolves the total and the store clock. */
  addEarlyRetries(
    account: string,
    ref: string,
    windowMs: number,
    n: number,
  ): Promise<{ count: number; nowMs: number }>;
}

const DAY_MS = 86_400_000;
/** Shared-counter updates of one flush in flight at once. */
const SHARED_BATCH = 64;

/**
 * Turns inference events into flags, threshold-crossing alerts and TopKeys totals.
 *
 * Per instance it keeps a few buckets per active key (no copy of requests); shares come from the
 * store's counters, so every instance judges a key on its whole traffic. Store writes are
 * asynchronous and bounded: a tripped signal is written at most once per bucket per key and
 * signal, a crossing is claimed once per instance and sent once overall, totals are flushed in
 * batches. Nothing here ever blocks or fails a request.
 */
export class SignalEngine {
  private readonly keys = new Map<string, KeyState>();
  private readonly accounts = new Map<string, { keys: Set<string>; evaluatedAt: number }>();
  /** Crossing ids this instance has already handled, with when they can be forgotten. */
  private readonly crossings = new Map<string, number>();
  private readonly totals = new Map<number, Map<string, Totals>>();
  private readonly pending = new Set<Promise<unknown>>();
  private timer: NodeJS.Timeout | undefined;
  /** A timed flush is still writing. */
  private flushing = false;

  constructor(
    private readonly store: ReportStore,
    private readonly settings: () => SignalSettings,
    private readonly log: Pick<Logger, 'warn' | 'error'>,
    private readonly counter?: SharedCounter,
  ) {}

  /** Never throws; store work continues in the background (see idle()). */
  record(event: ReportEvent): void {
    // Whole milliseconds from here on: a store clock corrected by a measured offset has fractions.
    const e = { ...event, atMs: Math.floor(event.atMs) };
    try {
      if (e.kind === 'decision') this.onDecision(e);
      else if (e.kind === 'expired') this.onExpired(e);
      else this.onSettled(e);
    } catch (err) {
      this.log.error({ err }, 'report: event not recorded');
    }
  }

  /** Records an event that needs a store read first (tracked by idle(); a failed read is logged). */
  recordWhen(event: Promise<ReportEvent>): void {
    this.track(event.then((e) => this.record(e)));
  }

  /** Flushes totals every intervalMs until stop(). */
  start(intervalMs = 5_000): void {
    this.stop();
    this.timer = setInterval(() => {
      // A slow Redis never piles flushes up: totals keep gathering and go with the next one.
      if (this.flushing) return;
      this.flushing = true;
      this.track(
        this.flush().finally(() => {
          this.flushing = false;
        }),
      );
    }, intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Resolves when every store write started so far has finished. */
  async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  /**
   * Writes the totals gathered since the last flush (TopKeys) and the early retries into the shared
   * counters (re-evaluating those keys on the all-instance figure), and forgets idle keys.
   */
  async flush(): Promise<void> {
    const writes = [...this.totals].map(([start, byKey]) => this.store.addTotals(start, [...byKey.values()]));
    this.totals.clear();
    if (this.counter) writes.push(this.flushShared(this.counter));
    try {
      await Promise.all(writes);
    } finally {
      this.sweep();
    }
  }

  private async flushShared(counter: SharedCounter): Promise<void> {
    const cfg = this.settings();
    const windowMs = cfg.retryStorm.windowMs;
    const due: [key: string, s: KeyState, ref: string, n: number][] = [];
    for (const [key, s] of this.keys) {
      if (s.pendingEarly === 0 || s.ref === undefined) continue;
      due.push([key, s, s.ref, s.pendingEarly]);
      s.pendingEarly = 0;
    }
    // These are limiter-store decisions, on the limiter's own connection: a few at a time, so a
    // retry storm over thousands of keys never queues the hot path's decisions behind them.
    let failure: unknown;
    for (let i = 0; i < due.length; i += SHARED_BATCH) {
      const results = await Promise.allSettled(
        due.slice(i, i + SHARED_BATCH).map(([key, s, ref, n]) =>
          counter.addEarlyRetries(s.account, ref, windowMs, n).then(({ count, nowMs }) => {
            s.shared.earlyRetries = { count, windowMs, atMs: nowMs };
            this.evaluate(s, key, s.account, nowMs, cfg);
          }),
        ),
      );
      for (const r of results) if (r.status === 'rejected') failure ??= r.reason;
    }
    if (failure !== undefined) throw failure;
  }

  private track(p: Promise<unknown>): void {
    const tracked = p.catch((err) => this.log.warn({ err }, 'report: store write failed'));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  private state(key: string, account: string, atMs: number): KeyState {
    let s = this.keys.get(key);
    if (!s) {
      s = {
        account,
        buckets: [],
        retryUntilMs: 0,
        raisedAt: new Map(),
        lastMs: atMs,
        pendingEarly: 0,
        shared: {},
      };
      this.keys.set(key, s);
    }
    if (s.account !== account) {
      this.accounts.get(s.account)?.keys.delete(key);
      s.account = account;
    }
    let acct = this.accounts.get(account);
    if (!acct) {
      acct = { keys: new Set(), evaluatedAt: Number.NEGATIVE_INFINITY };
      this.accounts.set(account, acct);
    }
    acct.keys.add(key);
    s.lastMs = Math.max(s.lastMs, atMs);
    return s;
  }

  private bucket(s: KeyState, atMs: number, cfg: SignalSettings): Bucket {
    const start = Math.floor(atMs / cfg.bucketMs) * cfg.bucketMs;
    const last = s.buckets[s.buckets.length - 1];
    if (last && last.start === start) return last;
    // Late events (another instance's clock read a little earlier) land in the bucket they belong to.
    if (last && last.start > start) return s.buckets.find((b) => b.start === start) ?? last;
    const b = emptyBucket(start);
    // Shares matter for the share windows only; older buckets stay while they hold counts.
    const shares = atMs - shareRetentionMs(cfg);
    const counts = atMs - retentionMs(cfg);
    s.buckets = s.buckets.filter(
      (x) =>
        x.start + cfg.bucketMs > shares ||
        (x.start + cfg.bucketMs > counts && x.expired + x.earlyRetries > 0),
    );
    s.buckets.push(b);
    return b;
  }

  private onDecision(e: DecisionEvent): void {
    const cfg = this.settings();
    const s = this.state(e.key, e.account, e.atMs);
    if (e.ref !== undefined) s.ref = e.ref;
    const b = this.bucket(s, e.atMs, cfg);
    if (e.requestShare !== undefined) b.requestShare = Math.max(b.requestShare, e.requestShare);
    if (e.tokenShare !== undefined) b.tokenShare = Math.max(b.tokenShare, e.tokenShare);
    // The store's figure, all instances together; the latest decision's wins.
    if (e.longHeld && e.atMs >= (s.shared.longHeld?.atMs ?? Number.NEGATIVE_INFINITY)) {
      // Updated in place: an object a decision stored in this long-lived state was promoted, ~60 KB a
      // scavenge at (c)'s half load, and the pause grew by ~0.3 ms (--trace-gc-nvp, alternated runs).
      s.shared.longHeld ??= { count: 0, oldestMs: 0, atMs: 0 };
      const held = s.shared.longHeld;
      held.count = e.longHeld.count;
      held.oldestMs = e.longHeld.oldestMs;
      held.atMs = e.atMs;
    }
    if (!e.admitted) {
      if (e.atMs < s.retryUntilMs) {
        b.earlyRetries++;
        s.pendingEarly++;
      }
      const until = e.retryMs < 0 ? Number.POSITIVE_INFINITY : e.atMs + e.retryMs;
      if (e.retryMs !== 0) s.retryUntilMs = Math.max(s.retryUntilMs, until);
    } else {
      this.addTotal(e.key, e.account, e.atMs, 1, 0, 0);
    }

    this.evaluate(s, e.key, e.account, e.atMs, cfg);
  }

  private onExpired(e: ExpiredEvent): void {
    const cfg = this.settings();
    const s = this.state(e.key, e.account, e.atMs);
    this.bucket(s, e.atMs, cfg).expired += e.count;
    if (e.shared) s.shared.expired = { ...e.shared, atMs: e.atMs };
    this.evaluate(s, e.key, e.account, e.atMs, cfg);
  }

  private evaluate(s: KeyState, key: string, account: string, atMs: number, cfg: SignalSettings): void {
    for (const trip of evaluateKey(s.buckets, cfg, atMs, s.shared))
      this.raise(s, key, account, trip, atMs, cfg);

    const acct = this.accounts.get(account)!;
    if (acct.keys.size >= cfg.limitSplitting.keys && atMs - acct.evaluatedAt >= cfg.bucketMs) {
      acct.evaluatedAt = atMs;
      const buckets = new Map<string, Bucket[]>();
      for (const k of acct.keys) buckets.set(k, this.keys.get(k)?.buckets ?? []);
      const trip = evaluateAccount(buckets, cfg, atMs);
      // An account-wide flag: its key is the account's marker, the keys are named in the detail.
      if (trip) this.raise(s, `account:${account}`, account, trip, atMs, cfg, true);
    }
  }

  private raise(
    s: KeyState,
    key: string,
    account: string,
    trip: Trip,
    atMs: number,
    cfg: SignalSettings,
    force = false,
  ): void {
    const last = s.raisedAt.get(trip.signal);
    if (!force && last !== undefined && atMs - last < cfg.bucketMs) return;
    s.raisedAt.set(trip.signal, atMs);
    this.track(
      this.store
        .raiseFlag({
          key,
          account,
          signal: trip.signal,
          observed: trip.observed,
          threshold: trip.threshold,
          windowMs: trip.windowMs,
          detail: trip.detail,
          sinceMs: trip.sinceMs,
          atMs,
        })
        .then(async (r) => {
          if (r.outcome !== 'created' || !r.flag) return;
          flagsRaised.inc({ signal: trip.signal });
          this.log.warn({ flag: r.flag }, `report: flag raised: ${trip.signal} on ${key}`);
          await this.store.publish({ atMs, flag: r.flag });
        }),
    );
  }

  private onSettled(e: SettledEvent): void {
    const cfg = this.settings();
    this.state(e.key, e.account, e.atMs);
    this.addTotal(e.key, e.account, e.atMs, 0, e.tokens, e.spendMicros);
    const period = e.period;
    for (const budget of e.budgets) {
      for (const share of crossedShares(cfg.alertShares, budget.limit, budget.used)) {
        const id = `${budget.metric}:${e.key}:${period}:${share}`;
        if (this.crossings.has(id)) continue;
        const ttlMs = Math.max(e.periodEndMs - e.atMs, 0) + DAY_MS;
        this.crossings.set(id, e.atMs + ttlMs);
        const alert: Alert = {
          atMs: e.atMs,
          crossing: {
            key: e.key,
            account: e.account,
            metric: budget.metric,
            share,
            used: budget.used,
            limit: budget.limit,
            period,
          },
        };
        this.track(
          this.store.claimOnce(`crossing:${id}`, ttlMs).then(
            async (first) => {
              if (!first) return;
              crossingsSent.inc({ metric: budget.metric });
              this.log.warn({ alert }, `report: ${budget.metric} of ${e.key} crossed ${share * 100}%`);
              await this.store.publish(alert);
            },
            (err: unknown) => {
              // Not claimed: the next debit of this key tries again.
              this.crossings.delete(id);
              throw err;
            },
          ),
        );
      }
    }
  }

  private addTotal(
    key: string,
    account: string,
    atMs: number,
    requests: number,
    tokens: number,
    spend: number,
  ) {
    const start = Math.floor(atMs / TOP_BUCKET_MS) * TOP_BUCKET_MS;
    let bucket = this.totals.get(start);
    if (!bucket) {
      bucket = new Map();
      this.totals.set(start, bucket);
    }
    const t = bucket.get(key);
    if (t) {
      t.account = account;
      t.requests += requests;
      t.tokens += tokens;
      t.spendMicros += spend;
    } else bucket.set(key, { key, account, requests, tokens, spendMicros: spend });
  }

  /** Forgets keys idle for longer than any window, and crossings of past periods. */
  private sweep(): void {
    const cfg = this.settings();
    const keep = retentionMs(cfg);
    let newest = 0;
    for (const s of this.keys.values()) newest = Math.max(newest, s.lastMs);
    for (const [key, s] of this.keys) {
      if (newest - s.lastMs <= keep) continue;
      this.keys.delete(key);
      const acct = this.accounts.get(s.account);
      acct?.keys.delete(key);
      if (acct && acct.keys.size === 0) this.accounts.delete(s.account);
    }
    for (const [id, until] of this.crossings) if (until < newest) this.crossings.delete(id);
  }
}

const shareRetentionMs = (cfg: SignalSettings): number =>
  Math.max(cfg.requestRate.windowMs, cfg.tokenRate.windowMs, cfg.limitSplitting.windowMs) + cfg.bucketMs;

const retentionMs = (cfg: SignalSettings): number =>
  Math.max(
    cfg.requestRate.windowMs,
    cfg.tokenRate.windowMs,
    cfg.runaway.windowMs,
    cfg.retryStorm.windowMs,
    cfg.limitSplitting.windowMs,
  ) + cfg.bucketMs;
