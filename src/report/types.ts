import { invalid } from '../errors.js';
import type { SignalKind } from '../policy/signals.js';

export const FLAG_STATES = ['open', 'reviewed', 'dismissed'] as const;
export type FlagState = (typeof FLAG_STATES)[number];

/** A flag for human review. Never holds a raw key: `key` is a key id or the key's hash. */
export interface FlagRecord {
  id: string;
  key: string;
  account: string;
  signal: SignalKind;
  observed: number;
  threshold: number;
  windowMs: number;
  firstSeenMs: number;
  lastSeenMs: number;
  state: FlagState;
  note: string;
  reviewedBy: string;
  reviewedAtMs: number;
  detail: string;
}

/** A tripped signal as the engine reports it to the store: the figures a flag carries, and when. */
export interface FlagInput
  extends Pick<FlagRecord, 'key' | 'account' | 'signal' | 'observed' | 'threshold' | 'windowMs' | 'detail'> {
  /** Start of the evidence: when a flag for key+signal was closed after this, nothing is raised. */
  sinceMs: number;
  atMs: number;
}

export interface RaiseResult {
  /** created: a new open flag; updated: the open flag got the latest figures; suppressed: already reviewed. */
  outcome: 'created' | 'updated' | 'suppressed';
  flag?: FlagRecord;
}

export interface FlagFilter {
  state?: FlagState;
  signal?: SignalKind;
  account?: string;
}

export interface FlagPage {
  flags: FlagRecord[];
  /** Empty when there is nothing more. */
  nextPageToken: string;
}

export type CrossingMetric = 'monthly_spend' | 'monthly_tokens';

export interface Crossing {
  key: string;
  account: string;
  metric: CrossingMetric;
  share: number;
  used: number;
  limit: number;
  period: string;
}

export type Alert = { atMs: number } & ({ flag: FlagRecord } | { crossing: Crossing });

export type TopBy = 'requests' | 'tokens' | 'spend';

/** Per-key totals of one bucket, flushed by each instance. */
export interface Totals {
  key: string;
  account: string;
  requests: number;
  tokens: number;
  spendMicros: number;
}

export interface TopEntry {
  key: string;
  account: string;
  value: number;
}

/** The total TopKeys ranks by. */
export const totalOf = (t: Totals, by: TopBy): number =>
  by === 'requests' ? t.requests : by === 'tokens' ? t.tokens : t.spendMicros;

/** TopKeys order: highest first, ties by key. */
export const topOrder = (a: TopEntry, b: TopEntry): number => b.value - a.value || (a.key < b.key ? -1 : 1);

/**
 * Report state shared by all instances: flags (one open flag per key and signal), crossings sent
 * once a period, the alert fan-out, and per-key totals for TopKeys.
 */
export interface ReportStore {
  raiseFlag(input: FlagInput): Promise<RaiseResult>;
  getFlag(id: string): Promise<FlagRecord | undefined>;
  /** Newest first. */
  listFlags(filter: FlagFilter, pageSize: number, pageToken: string): Promise<FlagPage>;
  /** Sets a flag's state (reviewed or dismissed) with a note; throws RkError NOT_FOUND. */
  reviewFlag(
    id: string,
    state: Exclude<FlagState, 'open'>,
    note: string,
    reviewer: string,
    atMs: number,
  ): Promise<FlagRecord>;
  /** true for exactly one caller per id, on any instance, until ttlMs passes. */
  claimOnce(id: string, ttlMs: number): Promise<boolean>;
  /** Delivers to the subscribers of every instance. */
  publish(alert: Alert): Promise<void>;
  /** Returns the unsubscribe function. */
  subscribe(listener: (alert: Alert) => void): () => void;
  /** Adds totals into the bucket starting at bucketStartMs (buckets of TOP_BUCKET_MS). */
  addTotals(bucketStartMs: number, totals: readonly Totals[]): Promise<void>;
  /** Highest totals over the buckets overlapping [fromMs, toMs]. */
  topKeys(by: TopBy, fromMs: number, toMs: number, limit: number): Promise<TopEntry[]>;
  close(): Promise<void>;
}

/** TopKeys granularity. */
export const TOP_BUCKET_MS = 60_000;
/** How long TopKeys totals are kept: the longest window TopKeys answers. */
export const TOP_RETENTION_MS = 24 * 60 * 60_000;

/** Page tokens are the id to continue after; ids sort by creation (zero-padded sequence). */
export const flagId = (seq: number): string => `f${String(seq).padStart(10, '0')}`;

/** The sequence of a flag id given as a page token. */
export const seqOfToken = (token: string): number => {
  const n = /^f(\d{1,15})$/.exec(token);
  if (!n) throw invalid('page_token', 'not a token from a previous page');
  return Number(n[1]);
};

export const matches = (f: FlagRecord, filter: FlagFilter): boolean =>
  (!filter.state || f.state === filter.state) &&
  (!filter.signal || f.signal === filter.signal) &&
  (!filter.account || f.account === filter.account);
