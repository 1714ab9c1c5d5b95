/**
 * The store contract shared by the in-memory and Redis stores.
 *
 * Policies (pure) turn a request into ordered operations; a store applies them atomically in one
 * round trip with its own clock (Redis TIME when Redis is used). Keys are logical names built by
 * the policies; a Redis Cluster hash tag (`{...}`) inside a key decides its slot, and every key of
 * an atomic decision carries the same tag. Stores prepend their own namespace prefix.
 *
 * Sliding windows (contract §6): a window of length W is kept as BUCKETS sub-buckets of W/BUCKETS.
 * A check counts the current bucket and the BUCKETS before it, a superset of every rolling window
 * ending now, so admitted units never exceed the limit in any rolling window of length W, while a
 * steady saturating load gets BUCKETS/(BUCKETS+1) of the limit.
 */

export const WINDOW_BUCKETS = 100;

// Limits may be Infinity (unlimited): the Redis store sends the largest exact integer instead.

/** A sliding-window limit: `cost` units are added when the decision admits. */
export interface WindowOp {
  kind: 'window';
  key: string;
  /** Units allowed in any rolling window of windowMs. */
  limit: number;
  windowMs: number;
  /** Units this decision adds when admitted; 0 checks without counting. Denies when used + cost > limit. */
  cost: number;
  /** Shadow mode: state is reported (ok = would it admit) and counted, but the op never denies. */
  shadow?: boolean;
  /**
   * false: not recorded in the decision's reservation (a count no settle corrects, e.g. requests),
   * so a fully settled reservation can be forgotten. Default: recorded.
   */
  reserve?: boolean;
}

/**
 * A concurrency limit: a slot per request id, held until released or its lease expires. The same
 * request id asking again keeps its one slot (the lease is renewed).
 */
export interface SlotOp {
  kind: 'slot';
  key: string;
  limit: number;
  leaseMs: number;
  /**
   * Where lease expiries found while checking are counted (a window key of expiredWindowMs). Only
   * ops with one report expiries in DecisionResult.expiredLeases: give it to the one slot every
   * request holds (the key's), so a request holding several slots is not counted per slot.
   */
  expiredKey?: string;
  expiredWindowMs?: number;
  /** Slots held at least this long (since admission) are counted in OpState.longHeld. */
  longHeldMs?: number;
}

/** A calendar budget (monthly tokens, spend): denied once used >= limit. Only settle adds to it. */
export interface BudgetOp {
  kind: 'budget';
  key: string;
  limit: number;
  /** End of the budget's period, Unix ms (for reset and Retry-After). */
  periodEndMs: number;
}

export type Op = WindowOp | SlotOp | BudgetOp;

export interface Decision {
  /** Checked in this order. */
  ops: Op[];
  /**
   * true: all ops pass or nothing is consumed; the first failing op (in order, shadow ops
   * excluded) decides. false (generic domains): each window op counts on its own when it fits.
   */
  atomic: boolean;
  /** Required when ops hold slots or reserve units that settle/release must find later. */
  reservation?: Reservation;
  /** Read state only; consume nothing (expired leases are ignored, not freed or counted). */
  dryRun?: boolean;
}

export interface Reservation {
  requestId: string;
  /** Where the admission records what it reserved (window amounts, slots, admission time). */
  key: string;
  ttlMs: number;
}

export interface OpState {
  ok: boolean;
  /** Units (or active slots, or period usage) after the decision. */
  used: number;
  /** max(0, limit - used). */
  remaining: number;
  /**
   * Ms until the whole limit is available again (windows: last counted bucket leaves, 0 when nothing
   * is counted; slots: the last lease expires; budgets: period end).
   */
  resetMs: number;
  /**
   * When !ok: ms until this op would admit the same cost again; -1 when it never can
   * (cost above limit). 0 when ok.
   */
  retryMs: number;
  /**
   * Slot ops: ms since the oldest slot still held was admitted (a renewed lease keeps its first
   * admission time); 0 when none is held.
   */
  heldMs?: number;
  /** Slot ops with longHeldMs: slots still held that were admitted at least longHeldMs ago. */
  longHeld?: number;
}

export interface DecisionResult {
  admitted: boolean;
  /** Index of the op that denied an atomic decision, else -1. */
  denied: number;
  /** One per op, in order. */
  states: OpState[];
  /** The store clock at the decision, Unix ms. */
  nowMs: number;
  /**
   * Requests whose leases were found expired (and freed) during this decision, in slot ops with an
   * expiredKey; a request freed in several such ops counts once.
   */
  expiredLeases: number;
}

/** Post-response settlement of an admitted (or unknown) request: contract §3. */
export interface Settle {
  requestId: string;
  /** The admission's reservation key (as in Decision.reservation.key). */
  reservationKey: string;
  /** Marker making the settle idempotent; kept onceTtlMs. */
  onceKey: string;
  onceTtlMs: number;
  /**
   * Actual units per window. When the admission reserved in that window and its bucket is still
   * counted, actual - reserved is added to the admission's bucket; otherwise actual is added now.
   */
  windows: { key: string; windowMs: number; limit: number; amount: number }[];
  /** Calendar counters (monthly tokens, spend) incremented by amount; expire ttlMs after now. */
  counters: { key: string; amount: number; ttlMs: number; limit: number; periodEndMs: number }[];
  /**
   * Free the admission's slots. The reservation record stays (until its TTL) while it holds amounts
   * not settled yet, so a later settle of other metrics of the same request still corrects what was
   * reserved for them; a record with nothing left to correct is forgotten once its slots are free.
   */
  release: boolean;
}

/** Settle states: a window is ok while used <= limit, a counter while used < limit (as a budget). */
export interface SettleResult {
  /** onceKey was already set: nothing was applied. */
  duplicate: boolean;
  /** A reservation was found for the request id. */
  reserved: boolean;
  windows: OpState[];
  counters: OpState[];
  nowMs: number;
}

/** Thrown by a store whose backend cannot be reached in time. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
}

export interface LimiterStore {
  /** The store's clock, Unix ms (Redis: local clock corrected by the measured offset to TIME). */
  now(): number;
  decide(decision: Decision): Promise<DecisionResult>;
  settle(settle: Settle): Promise<SettleResult>;
  /**
   * Free the reservation's slots; false when none was held (unknown, expired or already freed).
   * Reserved window units stay counted, and the record stays while it holds reserved amounts: a
   * later settle (Debit after Release) still replaces them by the actual amounts.
   */
  release(reservationKey: string): Promise<boolean>;
  /** true while the backend answers. */
  healthy(): boolean;
  close(): Promise<void>;
}
