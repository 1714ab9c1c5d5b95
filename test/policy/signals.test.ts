import { describe, expect, it } from 'vitest';
import {
  type Bucket,
  countIn,
  crossedShares,
  defaultSignalSettings as d,
  emptyBucket,
  evaluateAccount,
  evaluateKey,
  heldShare,
} from '../../src/policy/signals.js';

const M = 60_000;
const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);

/** One bucket a minute from T0 with the given request shares (undefined: no sample that minute). */
const run = (shares: (number | undefined)[], patch: Partial<Bucket> = {}): Bucket[] =>
  shares.flatMap((share, i) =>
    share === undefined ? [] : [{ ...emptyBucket(T0 + i * M), requestShare: share, ...patch }],
  );

describe('heldShare', () => {
  it('is the lowest bucket maximum of the run ending now, held since its first bucket', () => {
    const b = run([0.5, 0.95, 0.97, 0.92]);
    const held = heldShare(b, (x) => x.requestShare, 0.9, T0 + 3 * M + 30_000, M);
    expect(held).toEqual({ share: 0.92, sinceMs: T0 + M, heldMs: 2 * M + 30_000 });
  });

  it('breaks on a bucket below the threshold or without samples', () => {
    expect(heldShare(run([0.95, 0.95, 0.5, 0.95]), (x) => x.requestShare, 0.9, T0 + 3 * M, M)?.sinceMs).toBe(
      T0 + 3 * M,
    );
    expect(heldShare(run([0.95, undefined, 0.95]), (x) => x.requestShare, 0.9, T0 + 2 * M, M)?.sinceMs).toBe(
      T0 + 2 * M,
    );
  });

  it('accepts the just-finished bucket as newest, but not an older one', () => {
    const b = run([0.95, 0.95]);
    expect(heldShare(b, (x) => x.requestShare, 0.9, T0 + 2 * M + 1, M)?.heldMs).toBe(2 * M + 1);
    expect(heldShare(b, (x) => x.requestShare, 0.9, T0 + 3 * M, M)).toBeUndefined();
    expect(heldShare([], (x) => x.requestShare, 0.9, T0, M)).toBeUndefined();
  });
});

describe('countIn', () => {
  it('sums the buckets overlapping the window', () => {
    const b = run([1, 1, 1, 1], { expired: 2 });
    expect(countIn(b, (x) => x.expired, T0 + 3 * M + 10, 2 * M, M)).toEqual({ count: 6, sinceMs: T0 + M });
  });
});

describe('evaluateKey', () => {
  const steady = (share: number, minutes: number) => run(Array.from({ length: minutes }, () => share));

  it('trips the request rate once the share is held for the whole window', () => {
    expect(evaluateKey(steady(0.95, 10), d, T0 + 9 * M + 59_999)).toEqual([]);
    const [trip, ...rest] = evaluateKey(steady(0.95, 11), d, T0 + 10 * M);
    expect(rest).toEqual([]);
    expect(trip).toMatchObject({
      signal: 'excessive_request_rate',
      observed: 0.95,
      threshold: 0.9,
      windowMs: 10 * M,
      sinceMs: T0,
    });
    expect(trip?.detail).toContain('95%');
  });

  it('does not trip below the share, nor on a short burst', () => {
    expect(evaluateKey(steady(0.5, 30), d, T0 + 29 * M)).toEqual([]);
    const burst = run([1, 1, 0.4, ...Array.from({ length: 10 }, () => 0.2)]);
    expect(evaluateKey(burst, d, T0 + 12 * M)).toEqual([]);
  });

  it('trips the token rate on token shares alone', () => {
    const b = run(Array.from({ length: 11 }, () => 0.1)).map((x) => ({ ...x, tokenShare: 0.99 }));
    expect(evaluateKey(b, d, T0 + 10 * M).map((t) => t.signal)).toEqual(['excessive_token_rate']);
  });

  it('trips at exactly the share, and on store-wide counts when the local buckets count nothing', () => {
    expect(evaluateKey(steady(0.9, 11), d, T0 + 10 * M).map((t) => t.signal)).toEqual([
      'excessive_request_rate',
    ]);
    const quiet = steady(0.1, 2);
    const shared = (count: number) => ({ count, windowMs: M, atMs: T0 + M });
    expect(evaluateKey(quiet, d, T0 + M, { expired: shared(3) }).map((t) => t.signal)).toEqual([
      'runaway_requests',
    ]);
    expect(evaluateKey(quiet, d, T0 + M, { earlyRetries: shared(30) }).map((t) => t.signal)).toEqual([
      'retry_storm',
    ]);
    expect(evaluateKey(quiet, d, T0 + M, { expired: shared(0), earlyRetries: shared(0) })).toEqual([]);
  });

  it('trips runaway and retry storm on counts over their windows', () => {
    const b = [{ ...emptyBucket(T0), expired: 3, earlyRetries: 30 }];
    expect(evaluateKey(b, d, T0 + 1000).map((t) => [t.signal, t.observed])).toEqual([
      ['runaway_requests', 3],
      ['retry_storm', 30],
    ]);
    expect(evaluateKey(b, d, T0 + 6 * M).map((t) => t.signal)).toEqual(['runaway_requests']);
    expect(evaluateKey([{ ...emptyBucket(T0), expired: 2, earlyRetries: 29 }], d, T0)).toEqual([]);
  });
});

describe('store-wide counts', () => {
  const b = [{ ...emptyBucket(T0), expired: 1 }];
  const runaway = (shared: { count: number; windowMs: number; atMs: number }, now = T0 + 1000) =>
    evaluateKey(b, d, now, { expired: shared }).map((t) => [t.signal, t.observed]);

  it('raise the runaway count when fresh and over no more than the window', () => {
    expect(runaway({ count: 3, windowMs: 60 * M, atMs: T0 })).toEqual([['runaway_requests', 3]]);
    expect(runaway({ count: 3, windowMs: 61 * M, atMs: T0 })).toEqual([]);
    expect(runaway({ count: 3, windowMs: 60 * M, atMs: T0 }, T0 + 2 * M)).toEqual([]);
  });
});

describe('long-held slots', () => {
  const b = [{ ...emptyBucket(T0), expired: 2 }];
  const runaway = (longHeld: { count: number; oldestMs: number; atMs: number }, now = T0 + 1000) =>
    evaluateKey(b, d, now, { longHeld }).map((t) => [t.signal, t.observed, t.sinceMs, t.detail]);

  it('add to the expired leases while the figure is fresh', () => {
    expect(runaway({ count: 1, oldestMs: 20 * M, atMs: T0 + 1000 })).toEqual([
      [
        'runaway_requests',
        3,
        T0 + 1000 - 20 * M,
        '2 expired leases and 1 slots held over 5 min in 60 min (threshold 3)',
      ],
    ]);
    expect(runaway({ count: 0, oldestMs: 0, atMs: T0 + 1000 })).toEqual([]);
    expect(runaway({ count: 1, oldestMs: 20 * M, atMs: T0 }, T0 + 2 * M)).toEqual([]);
  });

  it('trip alone, before any lease expires', () => {
    const trips = evaluateKey([], d, T0, { longHeld: { count: 3, oldestMs: 6 * M, atMs: T0 } });
    expect(trips.map((t) => [t.signal, t.observed])).toEqual([['runaway_requests', 3]]);
  });
});

describe('evaluateAccount', () => {
  it('trips when enough keys each hold the share', () => {
    const near = run(Array.from({ length: 11 }, () => 0.85));
    const low = run(Array.from({ length: 11 }, () => 0.3));
    const keys = new Map([
      ['b', near],
      ['a', near],
      ['c', low],
    ]);
    expect(evaluateAccount(keys, d, T0 + 10 * M)).toBeUndefined();
    keys.set('c', near);
    const trip = evaluateAccount(keys, d, T0 + 10 * M);
    expect(trip).toMatchObject({
      signal: 'limit_splitting',
      observed: 3,
      threshold: 3,
      keys: ['a', 'b', 'c'],
    });
  });
});

describe('crossedShares', () => {
  it('lists the shares reached', () => {
    expect(crossedShares([0.8, 1], 100, 79)).toEqual([]);
    expect(crossedShares([0.8, 1], 100, 80)).toEqual([0.8]);
    expect(crossedShares([0.8, 1], 100, 150)).toEqual([0.8, 1]);
    expect(crossedShares([0.8, 1], 0, 150)).toEqual([]);
  });
});
