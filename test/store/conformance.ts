/**
 * The store conformance suite: the same assertions against every LimiterStore implementation.
 * The factory gets a clock the suite controls (memory: injected; Redis: the test clock ARGV).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decision, LimiterStore, Op, SlotOp, WindowOp } from '../../src/store/store.js';

export interface StoreFixture {
  store: LimiterStore;
  close(): Promise<void>;
}

export type MakeStore = (clock: () => number) => Promise<StoreFixture>;

/** A multiple of the bucket size of every window used below, so bucket boundaries are predictable. */
const T0 = 1_700_000_000_000;

export function conformance(name: string, make: MakeStore, opts: { propertyRuns?: number } = {}): void {
  describe(`store conformance: ${name}`, () => {
    let t = T0;
    let fixture: StoreFixture;
    let store: LimiterStore;
    let seq = 0;
    /** A fresh key (tagged so every key of one test shares a cluster slot). */
    let tag = '';
    const key = (k: string): string => `{${tag}}:${k}`;
    const fresh = (): void => {
      seq++;
      tag = `t${seq}`;
      t = T0 + seq * 10_000_000;
    };
    const win = (k: string, limit: number, cost = 1, windowMs = 1000, shadow = false): WindowOp => ({
      kind: 'window',
      key: key(k),
      limit,
      windowMs,
      cost,
      shadow,
    });
    const slot = (k: string, limit: number, leaseMs = 60_000, expired?: string): SlotOp => ({
      kind: 'slot',
      key: key(k),
      limit,
      leaseMs,
      ...(expired ? { expiredKey: key(expired), expiredWindowMs: 60_000 } : {}),
    });
    const decide = (ops: Op[], extra: Partial<Decision> = {}) =>
      store.decide({ ops, atomic: true, ...extra });
    const reserve = (id: string, ttlMs = 600_000) => ({ requestId: id, key: key(`res:${id}`), ttlMs });
    const peek = async (op: WindowOp) => (await decide([{ ...op, cost: 0 }], { dryRun: true })).states[0]!;

    beforeAll(async () => {
      fixture = await make(() => t);
      store = fixture.store;
    });
    afterAll(async () => {
      await fixture.close();
    });

    it('uses the given clock', () => {
      fresh();
      expect(store.now()).toBe(t);
    });

    it('admits up to the window limit, then denies with retry and reset times', async () => {
      fresh();
      const op = win('w', 5);
      for (let i = 0; i < 5; i++) {
        const r = await decide([op]);
        expect(r.admitted).toBe(true);
        expect(r.denied).toBe(-1);
        expect(r.nowMs).toBe(t);
        expect(r.states[0]).toEqual({ ok: true, used: i + 1, remaining: 4 - i, resetMs: 1010, retryMs: 0 });
        t += 100;
      }
      const r = await decide([op]);
      expect(r.admitted).toBe(false);
      expect(r.denied).toBe(0);
      // The first unit (bucket of T) leaves at T + W + one bucket; the clock is now T + 500.
      expect(r.states[0]).toEqual({
        ok: false,
        used: 5,
        remaining: 0,
        resetMs: 1010 - 500 + 400,
        retryMs: 510,
      });
      t += 509;
      expect((await decide([op])).admitted).toBe(false);
      t += 1;
      const later = await decide([op]);
      expect(later.admitted).toBe(true);
      expect(later.states[0]!.used).toBe(5);
    });

    it('answers retry -1 when the cost can never fit, and a cost of 0 only checks', async () => {
      fresh();
      const r = await decide([win('w', 5, 6)]);
      expect(r.admitted).toBe(false);
      expect(r.states[0]!.retryMs).toBe(-1);
      const check = await decide([win('w', 5, 0)]);
      expect(check.admitted).toBe(true);
      expect(check.states[0]).toMatchObject({ used: 0, remaining: 5, resetMs: 0 });
    });

    it('forgets a window once it has fully slid past', async () => {
      fresh();
      const op = win('w', 3, 3);
      expect((await decide([op])).admitted).toBe(true);
      t += 1010;
      const r = await decide([op]);
      expect(r.admitted).toBe(true);
      expect(r.states[0]!.used).toBe(3);
      t += 60_000;
      expect((await peek(op)).used).toBe(0);
    });

    it('atomic: one denying op moves no counter and takes no slot', async () => {
      fresh();
      const ops: Op[] = [slot('s', 5), win('a', 10, 3), win('b', 2, 3), win('c', 10, 1)];
      const r = await decide(ops, { reservation: reserve('r1') });
      expect(r.admitted).toBe(false);
      expect(r.denied).toBe(2);
      expect(r.states.map((s) => s.ok)).toEqual([true, true, false, true]);
      expect(r.states[1]!.used).toBe(0);
      const check = await decide(ops, { dryRun: true, reservation: reserve('r2') });
      expect(check.states.map((s) => s.used)).toEqual([0, 0, 0, 0]);
      expect(await store.release(key('res:r1'))).toBe(false);
    });

    it('atomic: the first failing op in order decides', async () => {
      fresh();
      const r = await decide([win('a', 10), win('b', 0), win('c', 0)]);
      expect(r.denied).toBe(1);
    });

    it('atomic: an admitted decision counts every op', async () => {
      fresh();
      const ops: Op[] = [win('a', 10, 3), win('b', 10, 4), slot('s', 1)];
      const r = await decide(ops, { reservation: reserve('r1') });
      expect(r.admitted).toBe(true);
      expect(r.states.map((s) => s.used)).toEqual([3, 4, 1]);
      expect(r.states[2]).toMatchObject({ ok: true, remaining: 0, resetMs: 60_000 });
    });

    it('an empty decision admits', async () => {
      fresh();
      const r = await store.decide({ ops: [], atomic: true });
      expect(r).toEqual({ admitted: true, denied: -1, states: [], nowMs: t, expiredLeases: 0 });
    });

    it('dry run consumes nothing', async () => {
      fresh();
      const r = await decide([win('a', 10, 4), slot('s', 1)], { dryRun: true, reservation: reserve('r1') });
      expect(r.admitted).toBe(true);
      expect(r.states.map((s) => s.used)).toEqual([0, 0]);
      expect((await peek(win('a', 10))).used).toBe(0);
      const again = await decide([slot('s', 1)], { reservation: reserve('r2') });
      expect(again.admitted).toBe(true);
    });

    it('non-atomic: each window op counts on its own when it fits', async () => {
      fresh();
      const ops: Op[] = [win('a', 10, 3), win('b', 2, 3), win('c', 10, 1)];
      const r = await store.decide({ ops, atomic: false });
      expect(r.admitted).toBe(false);
      expect(r.denied).toBe(-1);
      expect(r.states.map((s) => s.ok)).toEqual([true, false, true]);
      expect(r.states.map((s) => s.used)).toEqual([3, 0, 1]);
      expect(r.states[1]!.retryMs).toBe(-1);
      const again = await store.decide({ ops: [win('a', 10, 3), win('b', 2, 1)], atomic: false });
      expect(again.admitted).toBe(true);
      expect(again.states.map((s) => s.used)).toEqual([6, 1]);
    });

    it('shadow ops report and count but never deny', async () => {
      fresh();
      const shadow = win('s', 1, 1, 1000, true);
      for (const atomic of [true, false]) {
        await store.decide({ ops: [shadow], atomic });
      }
      const r = await decide([win('a', 10), shadow]);
      expect(r.admitted).toBe(true);
      expect(r.denied).toBe(-1);
      expect(r.states[1]).toMatchObject({ ok: false, used: 3, remaining: 0 });
      expect(r.states[1]!.retryMs).toBeGreaterThan(0);
    });

    it('slots: acquire up to the limit, deny, release, re-acquire', async () => {
      fresh();
      const op = slot('s', 2, 60_000);
      expect((await decide([op], { reservation: reserve('a') })).admitted).toBe(true);
      t += 1000;
      expect((await decide([op], { reservation: reserve('b') })).admitted).toBe(true);
      const denied = await decide([op], { reservation: reserve('c') });
      expect(denied.admitted).toBe(false);
      expect(denied.states[0]).toEqual({
        ok: false,
        used: 2,
        remaining: 0,
        resetMs: 60_000,
        retryMs: 59_000,
        heldMs: 1000,
      });
      // The same request id asking again holds its one slot.
      const same = await decide([op], { reservation: reserve('a') });
      expect(same.admitted).toBe(true);
      expect(same.states[0]!.used).toBe(2);
      expect(await store.release(key('res:a'))).toBe(true);
      expect(await store.release(key('res:a'))).toBe(false);
      const c = await decide([op], { reservation: reserve('c') });
      expect(c.admitted).toBe(true);
      expect(c.states[0]!.used).toBe(2);
    });

    it('slots: expired leases are freed on check and counted', async () => {
      fresh();
      const op = slot('s', 2, 10_000, 'expired');
      await decide([op], { reservation: reserve('a') });
      await decide([op], { reservation: reserve('b') });
      expect((await decide([op], { reservation: reserve('c') })).admitted).toBe(false);
      t += 10_000;
      const r = await decide([op], { reservation: reserve('c') });
      expect(r.admitted).toBe(true);
      expect(r.expiredLeases).toBe(2);
      expect(r.states[0]!.used).toBe(1);
      expect((await peek(win('expired', 100, 0, 60_000))).used).toBe(2);
      const next = await decide([op], { reservation: reserve('d') });
      expect(next.expiredLeases).toBe(0);
    });

    it('slots: an expired request counts once, however many slots it held', async () => {
      fresh();
      const ops: Op[] = [slot('k', 5, 10_000, 'expired'), slot('m', 5, 10_000)];
      await decide(ops, { reservation: reserve('a') });
      await decide(ops, { reservation: reserve('b') });
      t += 10_000;
      const r = await decide(ops, { reservation: reserve('c') });
      expect(r.expiredLeases).toBe(2);
      expect(r.states.map((s) => s.used)).toEqual([1, 1]);
      // Two ops that count: each window counts its own, the decision counts requests.
      const both: Op[] = [slot('k2', 5, 10_000, 'x1'), slot('m2', 5, 10_000, 'x2')];
      await decide(both, { reservation: reserve('d') });
      t += 10_000;
      expect((await decide(both, { reservation: reserve('e') })).expiredLeases).toBe(1);
      expect((await peek(win('x1', 100, 0, 60_000))).used).toBe(1);
      expect((await peek(win('x2', 100, 0, 60_000))).used).toBe(1);
      // Slots without an expiry window are freed but not counted.
      await decide([slot('m3', 5, 10_000)], { reservation: reserve('f') });
      t += 10_000;
      const quiet = await decide([slot('m3', 5, 10_000)], { reservation: reserve('g') });
      expect(quiet.expiredLeases).toBe(0);
      expect(quiet.states[0]!.used).toBe(1);
    });

    it('slots: report the oldest held slot and count those held long, expired ones left out', async () => {
      fresh();
      const t0 = t;
      const op: SlotOp = { ...slot('s', 5, 10_000), longHeldMs: 5000 };
      const at = async (ms: number, id: string, extra: Partial<Decision> = {}) => {
        t = t0 + ms;
        return (await decide([op], { reservation: reserve(id), ...extra })).states[0]!;
      };
      expect(await at(0, 'a')).toMatchObject({ used: 1, heldMs: 0, longHeld: 0 });
      expect(await at(3000, 'b')).toMatchObject({ used: 2, heldMs: 3000, longHeld: 0 });
      expect(await at(5000, 'c')).toMatchObject({ used: 3, heldMs: 5000, longHeld: 1 });
      // b renews its lease (now until 15 000) and keeps its admission time.
      expect(await at(5000, 'b')).toMatchObject({ used: 3, heldMs: 5000, longHeld: 1 });
      // At 12 000 a has expired (10 000): a dry run frees nothing but leaves it out.
      expect(await at(12_000, 'x', { dryRun: true })).toMatchObject({ used: 2, heldMs: 9000, longHeld: 2 });
      const r = await decide([op], { reservation: reserve('d') });
      expect(r.states[0]).toMatchObject({ used: 3, heldMs: 9000, longHeld: 2 });
      expect(await store.release(key('res:b'))).toBe(true);
      expect(await at(12_000, 'x', { dryRun: true })).toMatchObject({ used: 2, heldMs: 7000, longHeld: 1 });
      // Without a threshold only the age is reported; with nothing held it is 0.
      const plain = await decide([slot('s2', 5)], { reservation: reserve('e'), dryRun: true });
      expect(plain.states[0]!.heldMs).toBe(0);
      expect(plain.states[0]!.longHeld).toBeUndefined();
    });

    it('slot limit 0 never admits', async () => {
      fresh();
      const r = await decide([slot('s', 0)], { reservation: reserve('a') });
      expect(r.admitted).toBe(false);
      expect(r.states[0]!.retryMs).toBe(-1);
    });

    it('budgets: settle counters fill them, then they deny until the period ends', async () => {
      fresh();
      const periodEndMs = t + 3_600_000;
      const budget: Op = { kind: 'budget', key: key('month'), limit: 100, periodEndMs };
      const first = await decide([budget]);
      expect(first.states[0]).toEqual({ ok: true, used: 0, remaining: 100, resetMs: 3_600_000, retryMs: 0 });
      const counter = { key: key('month'), amount: 100, ttlMs: 7_200_000, limit: 100, periodEndMs };
      const s = await store.settle({
        requestId: 'x',
        reservationKey: key('res:x'),
        onceKey: key('once:x'),
        onceTtlMs: 60_000,
        windows: [],
        counters: [counter],
        release: true,
      });
      expect(s.counters[0]).toEqual({
        ok: false,
        used: 100,
        remaining: 0,
        resetMs: 3_600_000,
        retryMs: 3_600_000,
      });
      const r = await decide([win('a', 10), budget]);
      expect(r.admitted).toBe(false);
      expect(r.denied).toBe(1);
      expect(r.states[1]!.retryMs).toBe(3_600_000);
      expect((await peek(win('a', 10))).used).toBe(0);
    });

    describe('settle', () => {
      const settleOf = (
        id: string,
        amount: number,
        extra: { release?: boolean; windowMs?: number } = {},
      ) => ({
        requestId: id,
        reservationKey: key(`res:${id}`),
        onceKey: key(`once:${id}`),
        onceTtlMs: 600_000,
        windows: [{ key: key('tok'), windowMs: extra.windowMs ?? 60_000, limit: 1000, amount }],
        counters: [{ key: key('month'), amount, ttlMs: 600_000, limit: 10_000, periodEndMs: t + 600_000 }],
        release: extra.release ?? true,
      });

      it('replaces the reservation by the actual amount, once', async () => {
        fresh();
        const tok = win('tok', 1000, 100, 60_000);
        const r = await decide([slot('s', 1), tok], { reservation: reserve('a') });
        expect(r.states[1]!.used).toBe(100);
        t += 5000;
        const s = await store.settle(settleOf('a', 40));
        expect(s).toMatchObject({ duplicate: false, reserved: true, nowMs: t });
        expect(s.windows[0]).toMatchObject({ ok: true, used: 40, remaining: 960 });
        expect(s.counters[0]).toMatchObject({ ok: true, used: 40, remaining: 9960 });
        const again = await store.settle(settleOf('a', 40));
        expect(again.duplicate).toBe(true);
        expect(again.windows[0]!.used).toBe(40);
        expect(again.counters[0]!.used).toBe(40);
        expect((await peek(tok)).used).toBe(40);
        // The slot was released by the settle.
        expect((await decide([slot('s', 1)], { reservation: reserve('b') })).admitted).toBe(true);
      });

      it('puts the correction in the admission bucket: it leaves with it', async () => {
        fresh();
        const tok = win('tok', 1000, 100, 60_000);
        await decide([tok], { reservation: reserve('a') });
        t += 30_000;
        await store.settle(settleOf('a', 300));
        expect((await peek(tok)).used).toBe(300);
        t += 30_600;
        expect((await peek(tok)).used).toBe(0);
      });

      it('adds the actual amount now when the admission has left the window', async () => {
        fresh();
        const tok = win('tok', 1000, 100, 1000);
        await decide([tok], { reservation: reserve('a') });
        t += 2000;
        await store.settle(settleOf('a', 70, { windowMs: 1000 }));
        expect((await peek(tok)).used).toBe(70);
      });

      it('counts concurrent duplicates once', async () => {
        fresh();
        await decide([win('tok', 1000, 100, 60_000)], { reservation: reserve('a') });
        const all = await Promise.all(Array.from({ length: 8 }, () => store.settle(settleOf('a', 250))));
        expect(all.filter((s) => !s.duplicate)).toHaveLength(1);
        expect((await peek(win('tok', 1000, 0, 60_000))).used).toBe(250);
      });

      it('without a reservation still counts', async () => {
        fresh();
        const s = await store.settle(settleOf('ghost', 30));
        expect(s).toMatchObject({ duplicate: false, reserved: false });
        expect(s.windows[0]!.used).toBe(30);
        expect(s.counters[0]!.used).toBe(30);
      });

      it('reports a window over its limit after a large settle', async () => {
        fresh();
        await decide([win('tok', 1000, 10, 60_000)], { reservation: reserve('a') });
        const s = await store.settle(settleOf('a', 1500));
        expect(s.windows[0]).toMatchObject({ ok: false, used: 1500, remaining: 0 });
        expect(s.windows[0]!.retryMs).toBeGreaterThan(0);
        expect((await decide([win('tok', 1000, 1, 60_000)])).admitted).toBe(false);
      });

      it('keeps the slot when not releasing; a later settle adds its whole amount', async () => {
        fresh();
        await decide([slot('s', 1), win('tok', 1000, 100, 60_000)], { reservation: reserve('a') });
        await store.settle(settleOf('a', 60, { release: false }));
        expect((await decide([slot('s', 1)], { reservation: reserve('b') })).admitted).toBe(false);
        const second = await store.settle({ ...settleOf('a', 5), onceKey: key('once:a2') });
        expect(second.windows[0]!.used).toBe(65);
        expect((await decide([slot('s', 1)], { reservation: reserve('b') })).admitted).toBe(true);
      });

      it('after a release, a settle still replaces the reservation; releasing twice is harmless', async () => {
        fresh();
        const tok = win('tok', 1000, 100, 60_000);
        await decide([slot('s', 1), tok], { reservation: reserve('a') });
        expect(await store.release(key('res:a'))).toBe(true);
        expect(await store.release(key('res:a'))).toBe(false);
        expect((await decide([slot('s', 1)], { reservation: reserve('b') })).admitted).toBe(true);
        t += 1000;
        const s = await store.settle(settleOf('a', 40));
        expect(s).toMatchObject({ duplicate: false, reserved: true });
        expect(s.windows[0]!.used).toBe(40);
        expect((await store.settle(settleOf('a', 40))).duplicate).toBe(true);
        expect((await peek(tok)).used).toBe(40);
        // The releasing settle found the slots already freed: b still holds its own.
        expect((await decide([slot('s', 1)], { reservation: reserve('c') })).admitted).toBe(false);
        expect(await store.release(key('res:a'))).toBe(false);
      });

      it('settles of separate metrics each correct their own reservation and free the slot once', async () => {
        fresh();
        const tin = win('in', 1000, 300, 60_000);
        const tout = win('out', 1000, 200, 60_000);
        await decide([slot('s', 1), tin, tout], { reservation: reserve('a') });
        const part = (metric: 'in' | 'out', amount: number) => ({
          ...settleOf('a', amount),
          onceKey: key(`once:a:${metric}`),
          windows: [{ key: key(metric), windowMs: 60_000, limit: 1000, amount }],
        });
        const first = await store.settle(part('in', 100));
        expect(first.windows[0]!.used).toBe(100);
        expect((await decide([slot('s', 1)], { reservation: reserve('b') })).admitted).toBe(true);
        const second = await store.settle(part('out', 50));
        expect(second).toMatchObject({ duplicate: false, reserved: true });
        expect(second.windows[0]!.used).toBe(50);
        expect((await peek(tin)).used).toBe(100);
        // b's slot is untouched by the second releasing settle.
        expect((await decide([slot('s', 1)], { reservation: reserve('c') })).admitted).toBe(false);
        // Nothing is left to correct: the record is gone.
        expect((await store.settle({ ...part('in', 1), onceKey: key('once:a:x') })).reserved).toBe(false);
      });

      it('forgets a reservation once its slots are freed and nothing is left to correct', async () => {
        fresh();
        const req: WindowOp = { ...win('req', 10, 1, 60_000), reserve: false };
        const tok = win('tok', 1000, 100, 60_000);
        await decide([slot('s', 1), req, tok], { reservation: reserve('a') });
        expect((await store.settle(settleOf('a', 40))).reserved).toBe(true);
        // The request count is not recorded: the settle corrected everything, and freed the slot.
        expect((await store.settle({ ...settleOf('a', 5), onceKey: key('once:a2') })).reserved).toBe(false);
        expect(await store.release(key('res:a'))).toBe(false);
        expect((await peek(win('req', 10, 1, 60_000))).used).toBe(1);
        // A release with nothing reserved forgets it at once; one with tokens reserved keeps it.
        await decide([slot('s', 1), req], { reservation: reserve('b') });
        expect(await store.release(key('res:b'))).toBe(true);
        expect((await store.settle(settleOf('b', 5))).reserved).toBe(false);
        await decide([slot('s', 1), req, tok], { reservation: reserve('c') });
        expect(await store.release(key('res:c'))).toBe(true);
        expect((await store.settle(settleOf('c', 5))).reserved).toBe(true);
      });

      it('forgets reservations after their TTL', async () => {
        fresh();
        await decide([win('tok', 1000, 100, 60_000)], { reservation: reserve('a', 1000) });
        t += 1001;
        const s = await store.settle(settleOf('a', 10));
        expect(s.reserved).toBe(false);
        expect(s.windows[0]!.used).toBe(110);
      });
    });

    it('property: admitted units never exceed the limit in any rolling window', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 20 }),
          fc.constantFrom(999, 1000, 3000, 60_000), // 999: buckets of 9.99 ms
          fc.array(fc.tuple(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 6 })), {
            minLength: 1,
            maxLength: 120,
          }),
          async (limit, windowMs, arrivals) => {
            fresh();
            t += 7; // start off a bucket boundary
            const admitted: [number, number][] = [];
            for (const [gap, cost] of arrivals) {
              t += Math.floor((gap * windowMs) / 1000);
              const r = await decide([win('p', limit, cost, windowMs)]);
              if (r.admitted) admitted.push([t, cost]);
            }
            for (const [end] of admitted) {
              let sum = 0;
              for (const [at, cost] of admitted) if (at > end - windowMs && at <= end) sum += cost;
              expect(sum).toBeLessThanOrEqual(limit);
            }
          },
        ),
        { numRuns: opts.propertyRuns ?? 100 },
      );
    });

    it('admits at least 98% of the limit under steady saturating load', async () => {
      fresh();
      const limit = 50;
      const windowMs = 1000;
      const windows = 10;
      let admitted = 0;
      const end = t + windows * windowMs;
      // Four times the limit, evenly spread.
      for (; t < end; t += 5) {
        if ((await decide([win('sat', limit, 1, windowMs)])).admitted) admitted++;
      }
      expect(admitted).toBeGreaterThanOrEqual(0.98 * limit * windows);
      expect(admitted).toBeLessThanOrEqual(limit * windows);
    });
  });
}
