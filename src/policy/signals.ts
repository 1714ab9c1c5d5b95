/**
 * Abuse signals (contract §7), evaluated without I/O.
 *
 * A key's recent activity is kept as a short run of sampling buckets (default one minute each):
 * the highest share of its request and token limits that any decision reported in the bucket
 * (the store's own window counters, so every instance sees the same figures), and counts of
 * lease expiries and of calls denied again before an earlier denial's Retry-After had passed.
 * A signal trips when a share is held in every bucket for the whole window, or a count over the
 * window reaches its threshold. Runaway requests also count the key's slots held long right now,
 * as the store reported with the key's latest decision: a slot counts as long-held while held and
 * as an expiry once its lease runs out, never both. Tripping raises a flag for review; nothing here
 * blocks.
 */

export const SIGNALS = [
  'excessive_request_rate',
  'excessive_token_rate',
  'runaway_requests',
  'retry_storm',
  'limit_splitting',
] as const;
export type SignalKind = (typeof SIGNALS)[number];

export interface ShareRule {
  /** Share of the key's limit (0..1] that trips the signal when held for windowMs. */
  share: number;
  windowMs: number;
}

export interface CountRule {
  /** Events within windowMs that trip the signal. */
  count: number;
  windowMs: number;
}

export interface SignalSettings {
  /** Sampling bucket length; shares are held when every bucket of the window reaches them. */
  bucketMs: number;
  requestRate: ShareRule;
  tokenRate: ShareRule;
  /**
   * Runaway/hung requests of one key: slot leases that expired (Debit/Release never came) within
   * the window, plus slots still held at least heldLongerThanMs.
   */
  runaway: CountRule & { heldLongerThanMs: number };
  /** Denied calls that came before an earlier denial's Retry-After had passed. */
  retryStorm: CountRule;
  /** An account with at least `keys` keys, each holding `share` of its request or token limit. */
  limitSplitting: ShareRule & { keys: number };
  /** Shares of monthly spend and monthly tokens that send a threshold-crossing alert once a period. */
  alertShares: number[];
}

export const defaultSignalSettings: SignalSettings = {
  bucketMs: 60_000,
  requestRate: { share: 0.9, windowMs: 10 * 60_000 },
  tokenRate: { share: 0.9, windowMs: 10 * 60_000 },
  runaway: { count: 3, windowMs: 60 * 60_000, heldLongerThanMs: 5 * 60_000 },
  retryStorm: { count: 30, windowMs: 5 * 60_000 },
  limitSplitting: { share: 0.8, keys: 3, windowMs: 10 * 60_000 },
  alertShares: [0.8, 1],
};

/** What one key did in one sampling bucket. */
export interface Bucket {
  /** Bucket start, Unix ms (a multiple of bucketMs). */
  start: number;
  /** Highest used/limit of the key's request limit reported in the bucket; -1 when none. */
  requestShare: number;
  /** Same for the key's token limit. */
  tokenShare: number;
  expired: number;
  earlyRetries: number;
}

export const emptyBucket = (start: number): Bucket => ({
  start,
  requestShare: -1,
  tokenShare: -1,
  expired: 0,
  earlyRetries: 0,
});

export interface Trip {
  signal: SignalKind;
  /** The figure compared with the threshold: the share held, or the count over the window. */
  observed: number;
  threshold: number;
  windowMs: number;
  /** Start of the evidence: a flag reviewed after this is not raised again for the same episode. */
  sinceMs: number;
  detail: string;
}

export interface Held {
  /** Lowest of the bucket maxima over the run: the share held throughout. */
  share: number;
  /** Start of the first bucket of the run. */
  sinceMs: number;
  /** How long the share has been held, up to now. */
  heldMs: number;
}

const bucketStart = (ms: number, bucketMs: number): number => Math.floor(ms / bucketMs) * bucketMs;

/**
 * The run of consecutive buckets, ending at the current (or just finished) bucket, whose share
 * reached `threshold`. Buckets are ordered oldest first. A bucket with no sample breaks the run:
 * a key that stops sending is not holding anything.
 */
export const heldShare = (
  buckets: readonly Bucket[],
  pick: (b: Bucket) => number,
  threshold: number,
  nowMs: number,
  bucketMs: number,
): Held | undefined => {
  let expected = bucketStart(nowMs, bucketMs);
  let i = buckets.length - 1;
  const newest = buckets[i];
  if (!newest) return undefined;
  // A decision just after a bucket boundary may not have landed yet: allow the previous bucket.
  if (newest.start !== expected) {
    if (newest.start !== expected - bucketMs) return undefined;
    expected -= bucketMs;
  }
  let share = Number.POSITIVE_INFINITY;
  let sinceMs = -1;
  for (; i >= 0; i--) {
    const b = buckets[i]!;
    if (b.start !== expected || pick(b) < threshold) break;
    share = Math.min(share, pick(b));
    sinceMs = b.start;
    expected -= bucketMs;
  }
  if (sinceMs < 0) return undefined;
  return { share, sinceMs, heldMs: nowMs - sinceMs };
};

/** Sum of a count over the buckets that overlap the last windowMs, with the first bucket counted. */
export const countIn = (
  buckets: readonly Bucket[],
  pick: (b: Bucket) => number,
  nowMs: number,
  windowMs: number,
  bucketMs: number,
): { count: number; sinceMs: number } => {
  const from = nowMs - windowMs;
  let count = 0;
  let sinceMs = nowMs;
  for (const b of buckets) {
    if (b.start + bucketMs <= from || pick(b) === 0) continue;
    count += pick(b);
    sinceMs = Math.min(sinceMs, b.start);
  }
  return { count, sinceMs };
};

const pct = (share: number): string => `${Math.round(share * 1000) / 10}%`;
const minutes = (ms: number): string => `${Math.round(ms / 6000) / 10} min`;

const shareTrip = (
  signal: SignalKind,
  what: string,
  rule: ShareRule,
  buckets: readonly Bucket[],
  pick: (b: Bucket) => number,
  nowMs: number,
  bucketMs: number,
): Trip | undefined => {
  const held = heldShare(buckets, pick, rule.share, nowMs, bucketMs);
  if (!held || held.heldMs < rule.windowMs) return undefined;
  return {
    signal,
    observed: held.share,
    threshold: rule.share,
    windowMs: rule.windowMs,
    sinceMs: held.sinceMs,
    detail: `at least ${pct(held.share)} of its ${what} limit for ${minutes(held.heldMs)} (threshold ${pct(rule.share)} for ${minutes(rule.windowMs)})`,
  };
};

const countTrip = (
  signal: SignalKind,
  what: string,
  rule: CountRule,
  buckets: readonly Bucket[],
  pick: (b: Bucket) => number,
  nowMs: number,
  bucketMs: number,
  shared?: SharedCount,
  plus?: { count: number; sinceMs: number; what: string },
): Trip | undefined => {
  const local = countIn(buckets, pick, nowMs, rule.windowMs, bucketMs);
  let { count, sinceMs } = local;
  // The store's count covers every instance; usable when fresh and over no more than the rule's window.
  if (shared && shared.windowMs <= rule.windowMs && nowMs - shared.atMs <= bucketMs && shared.count > count) {
    count = shared.count;
    sinceMs = Math.min(sinceMs, shared.atMs - shared.windowMs);
  }
  let text = `${count} ${what}`;
  if (plus && plus.count > 0) {
    count += plus.count;
    sinceMs = Math.min(sinceMs, plus.sinceMs);
    text += ` and ${plus.count} ${plus.what}`;
  }
  if (count < rule.count) return undefined;
  return {
    signal,
    observed: count,
    threshold: rule.count,
    windowMs: rule.windowMs,
    sinceMs,
    detail: `${text} in ${minutes(rule.windowMs)} (threshold ${rule.count})`,
  };
};

const requestShare = (b: Bucket): number => b.requestShare;
const tokenShare = (b: Bucket): number => b.tokenShare;

/** A count the store keeps for all instances (lease expiries of a key), as read at atMs. */
export interface SharedCount {
  count: number;
  windowMs: number;
  atMs: number;
}

/** The key's slots held at least runaway.heldLongerThanMs, as the store reported at atMs. */
export interface LongHeld {
  count: number;
  /** Age of the key's oldest held slot then. */
  oldestMs: number;
  atMs: number;
}

/** Counts the store keeps for every instance, when read: they raise the local counts. */
export interface SharedCounts {
  expired?: SharedCount;
  earlyRetries?: SharedCount;
  /** Used while no older than one bucket. */
  longHeld?: LongHeld;
}

/**
 * Whether no per-key signal can trip: the newest bucket holds neither share (a share is held only
 * from the newest bucket back) and nothing is counted (count rules need at least 1). Most decisions
 * are of keys far from every threshold, and this runs on each of them.
 */
const quiet = (buckets: readonly Bucket[], s: SignalSettings, shared: SharedCounts): boolean => {
  const newest = buckets[buckets.length - 1];
  if (newest && (newest.requestShare >= s.requestRate.share || newest.tokenShare >= s.tokenRate.share))
    return false;
  if ((shared.expired?.count ?? 0) > 0 || (shared.earlyRetries?.count ?? 0) > 0) return false;
  if ((shared.longHeld?.count ?? 0) > 0) return false;
  for (const b of buckets) if (b.expired > 0 || b.earlyRetries > 0) return false;
  return true;
};

/** The per-key signals that the key's buckets (oldest first) trip now. */
export const evaluateKey = (
  buckets: readonly Bucket[],
  s: SignalSettings,
  nowMs: number,
  shared: SharedCounts = {},
): Trip[] => {
  if (quiet(buckets, s, shared)) return [];
  const held = shared.longHeld;
  const longHeld =
    held && held.count > 0 && nowMs - held.atMs <= s.bucketMs
      ? {
          count: held.count,
          sinceMs: held.atMs - held.oldestMs,
          what: `slots held over ${minutes(s.runaway.heldLongerThanMs)}`,
        }
      : undefined;
  const trips = [
    shareTrip('excessive_request_rate', 'request', s.requestRate, buckets, requestShare, nowMs, s.bucketMs),
    shareTrip('excessive_token_rate', 'token', s.tokenRate, buckets, tokenShare, nowMs, s.bucketMs),
    countTrip(
      'runaway_requests',
      'expired leases',
      s.runaway,
      buckets,
      (b) => b.expired,
      nowMs,
      s.bucketMs,
      shared.expired,
      longHeld,
    ),
    countTrip(
      'retry_storm',
      'calls denied again before Retry-After',
      s.retryStorm,
      buckets,
      (b) => b.earlyRetries,
      nowMs,
      s.bucketMs,
      shared.earlyRetries,
    ),
  ];
  return trips.filter((t): t is Trip => t !== undefined);
};

/**
 * Limit splitting: enough of one account's keys each hold the configured share of their request
 * or token limit for the window. Keys are given with their buckets (oldest first).
 */
export const evaluateAccount = (
  keys: ReadonlyMap<string, readonly Bucket[]>,
  s: SignalSettings,
  nowMs: number,
): (Trip & { keys: string[] }) | undefined => {
  const rule = s.limitSplitting;
  const near: { key: string; held: Held }[] = [];
  for (const [key, buckets] of keys) {
    const held = heldShare(
      buckets,
      (b) => Math.max(b.requestShare, b.tokenShare),
      rule.share,
      nowMs,
      s.bucketMs,
    );
    if (held && held.heldMs >= rule.windowMs) near.push({ key, held });
  }
  if (near.length < rule.keys) return undefined;
  near.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const share = Math.min(...near.map((n) => n.held.share));
  return {
    signal: 'limit_splitting',
    observed: near.length,
    threshold: rule.keys,
    windowMs: rule.windowMs,
    sinceMs: Math.max(...near.map((n) => n.held.sinceMs)),
    keys: near.map((n) => n.key),
    detail: `${near.length} keys each at least ${pct(share)} of a limit for ${minutes(rule.windowMs)}: ${near.map((n) => n.key).join(', ')}`,
  };
};

/** The alert shares of a budget that `used` has reached; the store sends each once a period. */
export const crossedShares = (shares: readonly number[], limit: number, used: number): number[] =>
  limit > 0 ? shares.filter((share) => used >= share * limit) : [];
