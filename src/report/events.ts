import type { CrossingMetric } from './types.js';

/**
 * What the inference path tells the report engine, after the fact and off the hot path. Figures
 * are the store's (shared by every instance), so an instance seeing only part of a key's traffic
 * still sees the key's whole usage.
 */
export type ReportEvent = DecisionEvent | ExpiredEvent | SettledEvent;

/** One ShouldRateLimit decision of the inference domain (admitted or denied). */
export interface DecisionEvent {
  kind: 'decision';
  /** Store clock at the decision, Unix ms. */
  atMs: number;
  /** Key id, or the key's hash for unregistered keys; never the raw key. */
  key: string;
  account: string;
  /** The key's store identity (`k:<id>` or `h:<hash>`), for counters shared by all instances. */
  ref?: string;
  admitted: boolean;
  /** On denial: ms until the request would be admitted (Retry-After); -1 never; 0 unknown. */
  retryMs: number;
  /** used / limit of the key's own request limit after the decision; absent when unlimited. */
  requestShare?: number;
  /** used / limit of the key's own token limit after the decision; absent when unlimited. */
  tokenShare?: number;
  /** The key's slots held at least runaway.held_longer_than after the decision, and the oldest's age. */
  longHeld?: { count: number; oldestMs: number };
}

/** Slot leases of a key found expired (Debit/Release never came) during a decision. */
export interface ExpiredEvent {
  kind: 'expired';
  atMs: number;
  key: string;
  account: string;
  /** Expiries this instance found (0 for a follow-up carrying only `shared`). */
  count: number;
  /** The store's count of the key's expiries over its window, all instances together. */
  shared?: { count: number; windowMs: number };
}

/** A Debit (or `usage` descriptor) that counted tokens and spend. */
export interface SettledEvent {
  kind: 'settled';
  atMs: number;
  key: string;
  account: string;
  tokens: number;
  spendMicros: number;
  /** The key's monthly budgets after the debit, for threshold-crossing alerts. */
  budgets: { metric: CrossingMetric; used: number; limit: number }[];
  /** The budgets' calendar month (policy time zone), e.g. 2026-11, and its end. */
  period: string;
  periodEndMs: number;
}
