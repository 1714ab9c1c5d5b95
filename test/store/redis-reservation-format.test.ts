/** Reservations written by the previous format (a hash) still settle and release after an upgrade. */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { redisStore, uniquePrefix } from './helpers.js';

const url = inject('redisUrl');

describe('redis reservation format', () => {
  let admin: Redis;
  beforeAll(() => {
    admin = new Redis(url);
  });
  afterAll(() => admin.disconnect());

  it('releases the slots of a hash reservation and settles its reserved tokens', async () => {
    const prefix = uniquePrefix();
    let t = Date.now();
    const s = await redisStore({ kind: 'redis', url }, { prefix, testClock: () => t });
    const slot = { kind: 'slot' as const, key: '{k}:conc', limit: 1, leaseMs: 60_000 };
    const tok = { kind: 'window' as const, key: '{k}:tok', limit: 1000, windowMs: 60_000, cost: 100 };
    await s.store.decide({
      ops: [slot, tok],
      atomic: true,
      reservation: { requestId: 'r1', key: '{k}:res:r1', ttlMs: 60_000 },
    });
    // The same record as the previous format wrote it.
    const rkey = `${prefix}{k}:res:r1`;
    await admin.del(rkey);
    await admin.hset(
      rkey,
      'r',
      'r1',
      't',
      t,
      'x',
      t + 60_000,
      `w:${prefix}{k}:tok`,
      100,
      `s:${prefix}{k}:conc`,
      1,
    );
    await admin.pexpire(rkey, 60_000);
    t += 10;
    expect(await s.store.release('{k}:res:r1')).toBe(true);
    expect(await s.store.release('{k}:res:r1')).toBe(false);
    const settled = await s.store.settle({
      requestId: 'r1',
      reservationKey: '{k}:res:r1',
      onceKey: '{k}:once:r1',
      onceTtlMs: 60_000,
      windows: [{ key: '{k}:tok', windowMs: 60_000, limit: 1000, amount: 30 }],
      counters: [],
      release: true,
    });
    expect(settled.reserved).toBe(true);
    expect(settled.windows[0]!.used).toBe(30);
    // The slot was freed by the release: another request gets it.
    const next = await s.store.decide({
      ops: [slot],
      atomic: true,
      reservation: { requestId: 'r2', key: '{k}:res:r2', ttlMs: 60_000 },
    });
    expect(next.admitted).toBe(true);
    await s.close();
  });
});
