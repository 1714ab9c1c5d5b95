import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type SlotFigures, SlotSet } from '../../src/store/slot-set.js';

/** The definition SlotSet must meet, by scanning every lease. */
class Model {
  private readonly leases = new Map<string, { exp: number; since: number }>();
  private lastSince = Number.NEGATIVE_INFINITY;

  lease(rid: string, exp: number, now: number): void {
    const held = this.leases.get(rid);
    if (held) {
      held.exp = exp;
      return;
    }
    this.lastSince = Math.max(this.lastSince, now);
    this.leases.set(rid, { exp, since: this.lastSince });
  }

  free(rid: string): boolean {
    return this.leases.delete(rid);
  }

  expire(now: number): string[] {
    const gone = [...this.leases].filter(([, l]) => l.exp <= now).map(([rid]) => rid);
    for (const rid of gone) this.leases.delete(rid);
    return gone;
  }

  figures(now: number, longHeldMs?: number): SlotFigures {
    const live = [...this.leases.values()].filter((l) => l.exp > now);
    const min = (xs: number[]) => (xs.length ? Math.min(...xs) : undefined);
    const max = (xs: number[]) => (xs.length ? Math.max(...xs) : undefined);
    return {
      used: live.length,
      first: min(live.map((l) => l.exp)),
      last: max(live.map((l) => l.exp)),
      oldest: min(live.map((l) => l.since)),
      longHeld: longHeldMs === undefined ? undefined : live.filter((l) => l.since <= now - longHeldMs).length,
    };
  }
}

type Step =
  | { op: 'lease'; rid: number; lease: number; dt: number }
  | { op: 'free'; rid: number }
  | { op: 'expire'; dt: number }
  | { op: 'figures'; dt: number; longHeld: number | undefined };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    op: fc.constant('lease' as const),
    rid: fc.nat(40),
    lease: fc.constantFrom(5, 20, 60),
    dt: fc.integer({ min: -3, max: 4 }),
  }),
  fc.record({ op: fc.constant('free' as const), rid: fc.nat(40) }),
  fc.record({ op: fc.constant('expire' as const), dt: fc.integer({ min: 0, max: 10 }) }),
  fc.record({
    op: fc.constant('figures' as const),
    dt: fc.integer({ min: -2, max: 10 }),
    longHeld: fc.option(fc.constantFrom(0, 3, 15, 40), { nil: undefined }),
  }),
);

describe('SlotSet', () => {
  it('answers as a scan of every lease would, whatever the order of leases, frees, expiries and clock steps', () => {
    fc.assert(
      fc.property(fc.array(step, { minLength: 200, maxLength: 1500 }), (steps) => {
        const set = new SlotSet();
        const model = new Model();
        let now = 1_000;
        for (const s of steps) {
          if (s.op === 'lease') {
            now += s.dt;
            set.lease(`r${s.rid}`, now + s.lease, now);
            model.lease(`r${s.rid}`, now + s.lease, now);
          } else if (s.op === 'free') {
            expect(set.free(`r${s.rid}`)).toBe(model.free(`r${s.rid}`));
          } else if (s.op === 'expire') {
            now += s.dt;
            const gone = new Set<string>();
            expect(set.expire(now, gone)).toBe(gone.size);
            expect([...gone].sort()).toEqual(model.expire(now).sort());
          } else {
            now += s.dt;
            expect(set.figures(now, s.longHeld)).toEqual(model.figures(now, s.longHeld));
          }
          expect(set.size).toBe(model.figures(Number.NEGATIVE_INFINITY).used);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('keeps its admission list bounded when leases are freed in any order', () => {
    const set = new SlotSet();
    // One lease held throughout while 100,000 others come and go: freed holes must not pile up.
    set.lease('hung', 1e12, 0);
    for (let i = 0; i < 100_000; i++) {
      set.lease(`r${i}`, 1e12, i);
      set.free(`r${i}`);
    }
    expect(set.size).toBe(1);
    expect(set.admissionListLength()).toBeLessThanOrEqual(2 * set.size + 64);
    expect(set.figures(200_000, 100_000)).toMatchObject({ used: 1, oldest: 0, longHeld: 1 });
  });
});
