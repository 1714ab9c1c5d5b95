/**
 * The embedded store (the default): one process, one clock. Same semantics as the Redis scripts.
 *
 * Memory stays bounded: every entry carries the time after which it is useless (dropAt) and a
 * periodic, unref'd sweep deletes those; windows also drop expired buckets whenever touched.
 */

import { SlotSet } from './slot-set.js';
import {
  type Decision,
  type DecisionResult,
  type LimiterStore,
  type OpState,
  type Settle,
  type SettleResult,
  WINDOW_BUCKETS,
} from './store.js';
import { bucketIndex, leaveMs, msUntilLeave } from './window.js';

const B = WINDOW_BUCKETS;

/**
 * A window's non-empty buckets, ascending: b = [index, count, index, count, …], live from offset h.
 * Its key is the one name reservations keep: each request builds its keys anew, and a reservation
 * holding those would keep a copy of every name per request for the whole lease.
 */
class Win {
  b: number[] = [];
  h = 0;
  total = 0;
  dropAt = 0;
  constructor(readonly key: string) {}
}

interface Counter {
  v: number;
  dropAt: number;
}

interface Res {
  requestId: string;
  /** Admission time: settle corrects the bucket of this moment. */
  t: number;
  windowKeys: string[];
  amounts: number[];
  slotKeys: string[];
  /** Slots freed (Release, or a settle that released); kept only while amounts are left to correct. */
  freed: boolean;
  dropAt: number;
}

/** No reserved amount is left for a settle to correct. */
const settled = (res: Res): boolean => res.amounts.every((a) => a === 0);

function trim(w: Win, lo: number): void {
  const b = w.b;
  let h = w.h;
  while (h < b.length && b[h]! < lo) {
    w.total -= b[h + 1]!;
    h += 2;
  }
  if (h === b.length) {
    w.b = [];
    h = 0;
    w.total = 0;
  } else if (h >= 32 && h * 2 >= b.length) {
    b.splice(0, h);
    h = 0;
  }
  w.h = h;
}

/** Adds amount (may be negative; a bucket never goes below 0) to bucket j, which is ≥ the live range start. */
function add(w: Win, j: number, amount: number, windowMs: number): void {
  if (amount === 0) return;
  const b = w.b;
  const n = b.length;
  if (n === w.h) {
    if (amount < 0) return;
    // An exact-size literal: most windows (one per descriptor value) never hold a second bucket.
    w.b = [j, amount];
    w.h = 0;
    w.total = amount;
    w.dropAt = leaveMs(j, windowMs);
    return;
  }
  if (b[n - 2]! < j) {
    if (amount < 0) return;
    b.push(j, amount);
    w.total += amount;
    w.dropAt = leaveMs(j, windowMs);
    return;
  }
  let pos = n - 2;
  while (pos > w.h && b[pos]! > j) pos -= 2;
  if (b[pos] === j) {
    const before = b[pos + 1]!;
    const after = Math.max(0, before + amount);
    b[pos + 1] = after;
    w.total += after - before;
    return;
  }
  if (amount < 0) return;
  b.splice(b[pos]! < j ? pos + 2 : pos, 0, j, amount);
  w.total += amount;
}

/** Ms until `need` units have left the window (oldest buckets leave first). */
function retryAfter(w: Win, need: number, windowMs: number, now: number): number {
  let freed = 0;
  const b = w.b;
  for (let k = w.h; k < b.length; k += 2) {
    freed += b[k + 1]!;
    if (freed >= need) return msUntilLeave(b[k]!, windowMs, now);
  }
  return 0;
}

function windowState(
  w: Win | undefined,
  ok: boolean,
  need: number,
  limit: number,
  cost: number,
  windowMs: number,
  now: number,
): OpState {
  const used = w?.total ?? 0;
  const b = w?.b;
  return {
    ok,
    used,
    remaining: Math.max(0, limit - used),
    resetMs: w && used > 0 ? msUntilLeave(b![b!.length - 2]!, windowMs, now) : 0,
    retryMs: ok ? 0 : cost > limit ? -1 : w ? retryAfter(w, need, windowMs, now) : 0,
  };
}

export interface MemoryStoreOptions {
  /** The store clock, Unix ms (tests inject one). */
  now?: () => number;
  /** How often expired state is swept; 0 disables the timer (call sweep() yourself). */
  sweepIntervalMs?: number;
}

export class MemoryStore implements LimiterStore {
  private readonly clock: () => number;
  private readonly windows = new Map<string, Win>();
  private readonly slots = new Map<string, SlotSet>();
  private readonly counters = new Map<string, Counter>();
  private readonly reservations = new Map<string, Res>();
  private readonly once = new Map<string, number>();
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(options: MemoryStoreOptions = {}) {
    this.clock = options.now ?? Date.now;
    const every = options.sweepIntervalMs ?? 5_000;
    if (every > 0) {
      this.timer = setInterval(() => this.sweep(), every);
      this.timer.unref();
    }
  }

  now(): number {
    return this.clock();
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
  }

  /** Entries held (for memory tests and metrics). */
  size(): number {
    return this.windows.size + this.slots.size + this.counters.size + this.reservations.size + this.once.size;
  }

  /** Deletes every entry whose state can no longer matter. */
  sweep(): void {
    const now = this.clock();
    for (const [k, w] of this.windows) if (w.dropAt <= now) this.windows.delete(k);
    for (const [k, s] of this.slots) if (s.dropAt <= now) this.slots.delete(k);
    for (const [k, c] of this.counters) if (c.dropAt <= now) this.counters.delete(k);
    for (const [k, r] of this.reservations) if (r.dropAt <= now) this.reservations.delete(k);
    for (const [k, t] of this.once) if (t <= now) this.once.delete(k);
  }

  async decide(d: Decision): Promise<DecisionResult> {
    return this.decideNow(d);
  }

  async settle(s: Settle): Promise<SettleResult> {
    return this.settleNow(s);
  }

  async release(reservationKey: string): Promise<boolean> {
    const res = this.liveReservation(reservationKey, this.clock());
    if (!res || res.freed) return false;
    this.free(reservationKey, res);
    return true;
  }

  private decideNow(d: Decision): DecisionResult {
    const now = this.clock();
    const { ops, atomic } = d;
    const dry = d.dryRun === true;
    const rid = d.reservation?.requestId;
    const n = ops.length;
    const fits = new Array<boolean>(n);
    /** Windows: units counted before the decision. Slots: 1 when the request already holds one. */
    const pre = new Array<number>(n);
    /** Requests whose leases expired in ops that count expiries: once per request, not per slot. */
    let gone: Set<string> | undefined;

    for (let i = 0; i < n; i++) {
      const op = ops[i]!;
      if (op.kind === 'window') {
        const w = this.windows.get(op.key);
        if (w) trim(w, bucketIndex(now, op.windowMs) - B);
        const used = w?.total ?? 0;
        pre[i] = used;
        fits[i] = used + op.cost <= op.limit;
      } else if (op.kind === 'slot') {
        if (rid === undefined) throw new Error(`slot op ${op.key} needs decision.reservation`);
        const s = this.slots.get(op.key);
        let active = 0;
        if (s) {
          if (!dry) {
            const counted = op.expiredKey !== undefined && (op.expiredWindowMs ?? 0) > 0;
            if (counted) gone ??= new Set();
            const freed = s.expire(now, counted ? gone : undefined);
            if (freed > 0 && counted) this.count(op.expiredKey!, op.expiredWindowMs!, freed, now);
          }
          active = s.live(now);
        }
        const held = s?.holds(rid, now) ?? false;
        pre[i] = held ? 1 : 0;
        fits[i] = held || active < op.limit;
      } else {
        fits[i] = (this.counters.get(op.key)?.v ?? 0) < op.limit;
      }
    }

    let admitted = true;
    let denied = -1;
    for (let i = 0; i < n; i++) {
      const op = ops[i]!;
      if (!fits[i] && !(op.kind === 'window' && op.shadow)) {
        admitted = false;
        if (atomic) {
          denied = i;
          break;
        }
      }
    }

    /** Whether op i is applied: every op of an admitted atomic decision, else each that fits (or is shadow). */
    const applied = (i: number): boolean => {
      const op = ops[i]!;
      return atomic ? admitted : fits[i] || (op.kind === 'window' && op.shadow === true);
    };
    const record = !dry && d.reservation !== undefined && (admitted || !atomic);
    let res: Res | undefined;
    if (record) {
      // Arrays of their exact length: a record may live for the whole lease (10 min by default), and
      // arrays grown by push keep room for 17.
      let windows = 0;
      let slots = 0;
      for (let i = 0; i < n; i++) {
        const op = ops[i]!;
        if (!applied(i)) continue;
        if (op.kind === 'window' && op.reserve !== false) windows++;
        else if (op.kind === 'slot') slots++;
      }
      res = {
        requestId: rid!,
        t: now,
        windowKeys: new Array<string>(windows),
        amounts: new Array<number>(windows),
        slotKeys: new Array<string>(slots),
        freed: false,
        dropAt: now + d.reservation!.ttlMs,
      };
    }
    if (!dry) {
      let windows = 0;
      let slots = 0;
      for (let i = 0; i < n; i++) {
        const op = ops[i]!;
        if (!applied(i)) continue;
        if (op.kind === 'window') {
          if (op.cost > 0) this.count(op.key, op.windowMs, op.cost, now);
          if (res && op.reserve !== false) {
            res.windowKeys[windows] = this.window(op.key).key;
            res.amounts[windows++] = op.cost;
          }
        } else if (op.kind === 'slot') {
          let s = this.slots.get(op.key);
          if (!s) {
            s = new SlotSet(op.key);
            this.slots.set(op.key, s);
          }
          const exp = now + op.leaseMs;
          s.lease(rid!, exp, now);
          // Kept one lease past the last expiry so a later check still counts the expiry.
          s.dropAt = Math.max(s.dropAt, exp + op.leaseMs);
          if (res) res.slotKeys[slots++] = s.key;
        }
      }
    }
    if (res) this.reservations.set(d.reservation!.key, res);

    const states = new Array<OpState>(n);
    for (let i = 0; i < n; i++) {
      const op = ops[i]!;
      const ok = fits[i] ?? false;
      if (op.kind === 'window') {
        const w = this.windows.get(op.key);
        states[i] = windowState(w, ok, pre[i]! + op.cost - op.limit, op.limit, op.cost, op.windowMs, now);
      } else if (op.kind === 'slot') {
        states[i] = this.slotState(this.slots.get(op.key), ok, op.limit, now, op.longHeldMs);
      } else {
        const used = this.counters.get(op.key)?.v ?? 0;
        const reset = Math.max(0, op.periodEndMs - now);
        states[i] = {
          ok,
          used,
          remaining: Math.max(0, op.limit - used),
          resetMs: reset,
          retryMs: ok ? 0 : reset,
        };
      }
    }
    return { admitted, denied, states, nowMs: now, expiredLeases: gone?.size ?? 0 };
  }

  private settleNow(s: Settle): SettleResult {
    const now = this.clock();
    const onceUntil = this.once.get(s.onceKey);
    const duplicate = onceUntil !== undefined && onceUntil > now;
    if (!duplicate) this.once.set(s.onceKey, now + s.onceTtlMs);
    const res = this.liveReservation(s.reservationKey, now);

    const windows: OpState[] = [];
    for (const spec of s.windows) {
      const i = bucketIndex(now, spec.windowMs);
      if (!duplicate) {
        const w = this.window(spec.key);
        trim(w, i - B);
        const r = res ? res.windowKeys.indexOf(spec.key) : -1;
        const admittedAt = r >= 0 ? bucketIndex(res!.t, spec.windowMs) : -1;
        if (r >= 0 && admittedAt >= i - B) {
          add(w, admittedAt, spec.amount - res!.amounts[r]!, spec.windowMs);
          // Later settles of the same admission add their whole amount.
          res!.amounts[r] = 0;
        } else {
          add(w, i, spec.amount, spec.windowMs);
        }
      }
      const w = this.windows.get(spec.key);
      if (w) trim(w, i - B);
      const used = w?.total ?? 0;
      windows.push(windowState(w, used <= spec.limit, used - spec.limit, spec.limit, 0, spec.windowMs, now));
    }

    const counters: OpState[] = [];
    for (const spec of s.counters) {
      let c = this.counters.get(spec.key);
      if (c && c.dropAt <= now) c.v = 0;
      if (!duplicate) {
        if (!c) {
          c = { v: 0, dropAt: 0 };
          this.counters.set(spec.key, c);
        }
        c.v += spec.amount;
        c.dropAt = now + spec.ttlMs;
      }
      const used = c?.v ?? 0;
      const ok = used < spec.limit;
      const reset = Math.max(0, spec.periodEndMs - now);
      counters.push({
        ok,
        used,
        remaining: Math.max(0, spec.limit - used),
        resetMs: reset,
        retryMs: ok ? 0 : reset,
      });
    }

    if (!duplicate && res) {
      // Slots freed earlier: forget the record once nothing is left to correct.
      if (res.freed) {
        if (settled(res)) this.reservations.delete(s.reservationKey);
      } else if (s.release) this.free(s.reservationKey, res);
    }
    return { duplicate, reserved: res !== undefined, windows, counters, nowMs: now };
  }

  /** The window of key, made empty if there is none (the sweep drops it again while it stays empty). */
  private window(key: string): Win {
    let w = this.windows.get(key);
    if (!w) {
      w = new Win(key);
      this.windows.set(key, w);
    }
    return w;
  }

  private count(key: string, windowMs: number, amount: number, now: number): void {
    const w = this.window(key);
    const i = bucketIndex(now, windowMs);
    trim(w, i - B);
    add(w, i, amount, windowMs);
  }

  private slotState(
    s: SlotSet | undefined,
    ok: boolean,
    limit: number,
    now: number,
    longHeldMs: number | undefined,
  ): OpState {
    const f = s?.figures(now, longHeldMs);
    const used = f?.used ?? 0;
    return {
      ok,
      used,
      remaining: Math.max(0, limit - used),
      resetMs: f?.last !== undefined ? f.last - now : 0,
      retryMs: ok ? 0 : limit < 1 ? -1 : f?.first !== undefined ? f.first - now : 0,
      heldMs: f?.oldest !== undefined ? Math.max(0, now - f.oldest) : 0,
      ...(longHeldMs !== undefined ? { longHeld: f?.longHeld ?? 0 } : {}),
    };
  }

  private liveReservation(key: string, now: number): Res | undefined {
    const res = this.reservations.get(key);
    if (!res) return undefined;
    if (res.dropAt <= now) {
      this.reservations.delete(key);
      return undefined;
    }
    return res;
  }

  /**
   * Frees the slots. The record stays (until its TTL) while it holds amounts a later settle must
   * correct (a Debit after a Release, the second half of a split stream-done); else it goes.
   */
  private free(reservationKey: string, res: Res): void {
    for (const key of res.slotKeys) this.slots.get(key)?.free(res.requestId);
    if (settled(res)) this.reservations.delete(reservationKey);
    else res.freed = true;
  }
}
