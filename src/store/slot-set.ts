/**
 * The embedded store's concurrency slots of one key: each holder's lease expiry and admission time.
 * Every operation a decision makes is O(log n) in the slots held (or O(expired) for the figures of a
 * dry run), not a scan: a key whose requests never Debit or Release holds a slot per request for the
 * whole lease (600,000 at 1,000/s and 10 min), and a scan per decision would make each one cost more
 * than the request it limits. Mirrors decide.lua's ZSETs (expiry, admission time).
 */

interface Lease {
  readonly rid: string;
  exp: number;
  /** Admission time, kept when the lease is renewed. */
  readonly since: number;
  /** Index in admission order (SlotSet.order). */
  seq: number;
  /** Positions in the two expiry heaps. */
  lo: number;
  hi: number;
}

/** A binary heap of leases by expiry (earliest first, or latest first), each knowing its position. */
class ExpiryHeap {
  readonly items: Lease[] = [];

  constructor(
    private readonly at: 'lo' | 'hi',
    private readonly latestFirst: boolean,
  ) {}

  top(): Lease | undefined {
    return this.items[0];
  }

  push(l: Lease): void {
    l[this.at] = this.items.length;
    this.items.push(l);
    this.up(l[this.at]);
  }

  remove(l: Lease): void {
    const i = l[this.at];
    const last = this.items.pop()!;
    if (last === l) return;
    this.items[i] = last;
    last[this.at] = i;
    this.up(i);
    this.down(last[this.at]);
  }

  /** After l's expiry changed. */
  update(l: Lease): void {
    this.up(l[this.at]);
    this.down(l[this.at]);
  }

  private before(a: Lease, b: Lease): boolean {
    return this.latestFirst ? a.exp > b.exp : a.exp < b.exp;
  }

  private up(i: number): void {
    const h = this.items;
    const l = h[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(l, h[p]!)) break;
      h[i] = h[p]!;
      h[i]![this.at] = i;
      i = p;
    }
    h[i] = l;
    l[this.at] = i;
  }

  private down(i: number): void {
    const h = this.items;
    const l = h[i]!;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= h.length) break;
      if (c + 1 < h.length && this.before(h[c + 1]!, h[c]!)) c++;
      if (!this.before(h[c]!, l)) break;
      h[i] = h[c]!;
      h[i]![this.at] = i;
      i = c;
    }
    h[i] = l;
    l[this.at] = i;
  }
}

const NONE: readonly Lease[] = [];

export interface SlotFigures {
  /** Live leases (expiry after now). */
  used: number;
  /** Earliest and latest live expiry (undefined when none is live). */
  first: number | undefined;
  last: number | undefined;
  /** Admission time of the oldest live lease (undefined when none is live). */
  oldest: number | undefined;
  /** Live leases admitted at least longHeldMs ago (when asked). */
  longHeld: number | undefined;
}

export class SlotSet {
  /** The set's store key, the one copy reservations keep (see memory.ts's Win). */
  constructor(readonly key = '') {}

  /** Until then the set must be kept: one lease past the last expiry, so a later check counts it. */
  dropAt = 0;
  private readonly leases = new Map<string, Lease>();
  private readonly earliest = new ExpiryHeap('lo', false);
  private readonly latest = new ExpiryHeap('hi', true);
  /** Leases in admission order (admission times never decrease along it); freed ones are holes. */
  private order: (Lease | undefined)[] = [];
  private head = 0;
  private lastSince = Number.NEGATIVE_INFINITY;
  /** Long-held count: the live leases before order[cursor], all admitted at or before cut. */
  private cut = Number.NEGATIVE_INFINITY;
  private cursor = 0;
  private counted = 0;

  get size(): number {
    return this.leases.size;
  }

  /** Entries of the admission list, freed holes included (memory tests). */
  admissionListLength(): number {
    return this.order.length;
  }

  /** Leases live at now: expired ones not yet freed (a dry run frees none) are left out. */
  live(now: number): number {
    return this.leases.size - this.expiredAt(now).length;
  }

  /** Whether rid holds a lease live at now. */
  holds(rid: string, now: number): boolean {
    return (this.leases.get(rid)?.exp ?? 0) > now;
  }

  /** Sets rid's lease to expire at exp; a new holder is admitted at now (never before the last one). */
  lease(rid: string, exp: number, now: number): void {
    const held = this.leases.get(rid);
    if (held) {
      held.exp = exp;
      this.earliest.update(held);
      this.latest.update(held);
      return;
    }
    // A clock step back must not break the admission order's ascending times.
    if (now > this.lastSince) this.lastSince = now;
    const since = this.lastSince;
    const l: Lease = { rid, exp, since, seq: this.order.length, lo: 0, hi: 0 };
    this.leases.set(rid, l);
    this.order.push(l);
    this.earliest.push(l);
    this.latest.push(l);
  }

  /** Frees rid's slot; false when it held none. */
  free(rid: string): boolean {
    const l = this.leases.get(rid);
    if (!l) return false;
    this.drop(l);
    return true;
  }

  /** Frees every lease expired at now, adding each holder to `into` when given; returns how many. */
  expire(now: number, into?: Set<string>): number {
    let n = 0;
    for (let l = this.earliest.top(); l && l.exp <= now; l = this.earliest.top()) {
      this.drop(l);
      into?.add(l.rid);
      n++;
    }
    return n;
  }

  /** Figures of the leases live at now; expired ones not yet freed (a dry run) are left out. */
  figures(now: number, longHeldMs?: number): SlotFigures {
    const expired = this.expiredAt(now);
    const used = this.leases.size - expired.length;
    if (used === 0) {
      const longHeld = longHeldMs === undefined ? undefined : 0;
      return { used, first: undefined, last: undefined, oldest: undefined, longHeld };
    }
    let oldest: number | undefined;
    for (let i = this.head; i < this.order.length; i++) {
      const l = this.order[i];
      if (l && l.exp > now) {
        oldest = l.since;
        break;
      }
    }
    let longHeld: number | undefined;
    if (longHeldMs !== undefined) {
      const cut = now - longHeldMs;
      // None when the oldest live lease is younger; else those admitted by then, less expired ones.
      longHeld = 0;
      if (oldest! <= cut) {
        longHeld = this.admittedBy(cut);
        for (const l of expired) if (l.since <= cut) longHeld--;
      }
    }
    return { used, first: this.firstLive(now, expired), last: this.latest.top()!.exp, oldest, longHeld };
  }

  private drop(l: Lease): void {
    this.leases.delete(l.rid);
    this.earliest.remove(l);
    this.latest.remove(l);
    this.order[l.seq] = undefined;
    if (l.seq < this.cursor) this.counted--;
    while (this.head < this.order.length && this.order[this.head] === undefined) this.head++;
    // Holes left by freed leases: compact once they are most of the list.
    if (this.order.length > 2 * this.leases.size + 64) this.compact();
  }

  private compact(): void {
    const live: Lease[] = [];
    for (let i = this.head; i < this.order.length; i++) {
      const l = this.order[i];
      if (l) {
        l.seq = live.length;
        live.push(l);
      }
    }
    this.order = live;
    this.head = 0;
    this.cut = Number.NEGATIVE_INFINITY;
    this.cursor = 0;
    this.counted = 0;
  }

  /** Held leases (expired ones not yet freed too) admitted at or before cut; a cursor makes it amortized O(1). */
  private admittedBy(cut: number): number {
    if (cut < this.cut) {
      this.cursor = this.head;
      this.counted = 0;
    }
    this.cut = cut;
    const order = this.order;
    if (this.cursor < this.head) this.cursor = this.head;
    while (this.cursor < order.length) {
      const l = order[this.cursor];
      if (l) {
        if (l.since > cut) break;
        this.counted++;
      }
      this.cursor++;
    }
    return this.counted;
  }

  /** Leases expired at now but not freed: the top of the earliest-first heap, O(their number). */
  private expiredAt(now: number): readonly Lease[] {
    const h = this.earliest.items;
    if (h.length === 0 || h[0]!.exp > now) return NONE;
    const out: Lease[] = [];
    const visit = (i: number): void => {
      const l = h[i];
      if (!l || l.exp > now) return;
      out.push(l);
      visit(2 * i + 1);
      visit(2 * i + 2);
    };
    visit(0);
    return out;
  }

  /** The earliest expiry after now: the heap's top, or below the expired ones at its top. */
  private firstLive(now: number, expired: readonly Lease[]): number | undefined {
    const h = this.earliest.items;
    if (expired.length === 0) return h[0]?.exp;
    let first: number | undefined;
    for (const l of expired) {
      for (let c = 2 * l.lo + 1; c <= 2 * l.lo + 2; c++) {
        const e = h[c]?.exp;
        if (e !== undefined && e > now && (first === undefined || e < first)) first = e;
      }
    }
    return first;
  }
}
