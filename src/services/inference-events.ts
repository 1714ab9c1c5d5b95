import type { DenyCode, Metric, Scope } from '../policy/inference.js';

/** One limit's state after a decision or debit. */
export interface LimitUsage {
  metric: Metric;
  scope: Scope;
  limit: number;
  used: number;
  /** Window length, lease (concurrency) or calendar period (budgets). */
  windowMs: number;
}

/** Who a request was charged to; `keyRef` is `k:<id>` or `h:<peppered hash>`, never the raw key. */
export interface KeyIdentity {
  keyRef: string;
  keyId?: string;
  account: string;
  tier: string;
}

export interface AdmissionEvent extends KeyIdentity {
  atMs: number;
  model?: string;
  requestId: string;
  admitted: boolean;
  /** On denial. */
  code?: DenyCode;
  /** On denial by a limit (not by policy: unknown/disabled key, max_tokens). */
  denied?: { metric: Metric; scope: Scope };
  /** On denial by a limit: ms until the request would be admitted (Retry-After); -1 never. */
  retryMs?: number;
  /** Limited windows, slots and budgets of the decision, as they stood after it. */
  limits: LimitUsage[];
  /**
   * The key's own concurrency slots after the decision (runaway/hung signal): the age of the
   * oldest still held, and how many have been held at least signals.runaway.held_longer_than.
   * Absent when the decision did not reach the store.
   */
  held?: { oldestMs: number; long: number };
}

export interface DebitEvent extends KeyIdentity {
  atMs: number;
  /** '' for a stream-done debit without a model entry. */
  model: string;
  requestId: string;
  tokensIn: number;
  tokensOut: number;
  /** All tokens of the debit: tokensIn + tokensOut, or the total of a stream-done `usage: tokens`. */
  tokens: number;
  spendMicros: number;
  duplicate: boolean;
  /** False when no admission was known for the request id. */
  reserved: boolean;
  /** Windows and calendar counters after the debit (monthly tokens/spend, daily spend). */
  limits: LimitUsage[];
}

export interface LeaseExpiryEvent {
  atMs: number;
  /** The key whose decision found the expired leases (they are counted in its `keyExpired` window). */
  keyRef: string;
  account: string;
  count: number;
}

/**
 * Hooks for the report service's signals and alerts. Called synchronously after each answer is
 * computed; a hook must be cheap and must not throw (errors are logged and dropped).
 */
export interface InferenceEvents {
  onDecision?(e: AdmissionEvent): void;
  onDebit?(e: DebitEvent): void;
  onLeaseExpired?(e: LeaseExpiryEvent): void;
}
