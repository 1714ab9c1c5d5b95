/** The embedded store's memory bound (issue 2): 1M distinct descriptor values stay under 500 MB. */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/store/memory.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const heapAfterGc = (): number => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

describe('memory store bounds', () => {
  it('holds 1M distinct windows in under 500 MB and drops them once expired', async () => {
    let t = 1_700_000_000_000;
    const store = new MemoryStore({ now: () => t, sweepIntervalMs: 0 });
    const before = heapAfterGc();
    for (let i = 0; i < 1_000_000; i++) {
      const r = await store.decide({
        ops: [
          {
            kind: 'window',
            key: `generic:api:{remote_address_10.${i >> 16}.${(i >> 8) & 255}.${i & 255}}`,
            limit: 10,
            windowMs: 60_000,
            cost: 1,
          },
        ],
        atomic: false,
      });
      if (!r.admitted) throw new Error('unexpected denial');
      t += 0.05;
    }
    expect(store.size()).toBe(1_000_000);
    const grown = heapAfterGc() - before;
    expect(grown).toBeLessThan(500 * 1024 * 1024);
    expect(grown).toBeGreaterThan(0);

    t += 61_000;
    store.sweep();
    expect(store.size()).toBe(0);
    expect(heapAfterGc() - before).toBeLessThan(grown / 10);
    await store.close();
  });

  it('an admitted request held for its lease costs under 1 KB: its record shares the store’s key names', async () => {
    const t = 1_700_000_000_000;
    const store = new MemoryStore({ now: () => t, sweepIntervalMs: 0 });
    const n = 100_000;
    const account = 'h:8e1cb485d6146c5e8387bcbecf025a081335d5794d026b414ae61d4804a61996';
    // Built anew for every request, as the policy builds them: equal names, distinct strings.
    const name = (suffix: string): string => `{a:${account}}:m:some-model:${suffix}`;
    const before = heapAfterGc();
    for (let i = 0; i < n; i++) {
      const rid = `0b6ad2c4-1f0e-4b8e-9d3a-${String(i).padStart(12, '0')}`;
      const r = await store.decide({
        ops: [
          { kind: 'window', key: name('req:60000'), limit: 1e9, windowMs: 60_000, cost: 1, reserve: false },
          { kind: 'window', key: name('tok:60000'), limit: 1e9, windowMs: 60_000, cost: 512 },
          { kind: 'window', key: name('in:60000'), limit: 1e9, windowMs: 60_000, cost: 0 },
          { kind: 'window', key: name('out:60000'), limit: 1e9, windowMs: 60_000, cost: 0 },
          { kind: 'slot', key: name('conc'), limit: 1e9, leaseMs: 600_000 },
        ],
        atomic: true,
        reservation: { requestId: rid, key: `{a:${account}}:res:${rid}`, ttlMs: 600_000 },
      });
      if (!r.admitted) throw new Error('unexpected denial');
    }
    const perRequest = (heapAfterGc() - before) / n;
    expect(perRequest).toBeGreaterThan(100);
    expect(perRequest).toBeLessThan(1024);
    await store.close();
  });

  it('sweeps only what has expired, on its own timer too', async () => {
    let t = 1_700_000_000_000;
    const store = new MemoryStore({ now: () => t, sweepIntervalMs: 0 });
    const w = (key: string, windowMs: number) => ({
      kind: 'window' as const,
      key,
      limit: 5,
      windowMs,
      cost: 1,
    });
    await store.decide({ ops: [w('short', 1000), w('long', 60_000)], atomic: true });
    await store.decide({
      ops: [{ kind: 'slot', key: 'slot', limit: 1, leaseMs: 5000 }],
      atomic: true,
      reservation: { requestId: 'r', key: 'res', ttlMs: 2000 },
    });
    await store.settle({
      requestId: 'x',
      reservationKey: 'none',
      onceKey: 'once',
      onceTtlMs: 3000,
      windows: [],
      counters: [{ key: 'month', amount: 1, ttlMs: 4000, limit: 10, periodEndMs: t + 4000 }],
      release: true,
    });
    expect(store.size()).toBe(6);
    t += 1010;
    store.sweep();
    expect(store.size()).toBe(5);
    t += 2000; // reservation (2 s) and once marker (3 s) gone
    store.sweep();
    expect(store.size()).toBe(3);
    t += 8000; // slot lease + grace (10 s), counter (4 s)
    store.sweep();
    expect(store.size()).toBe(1);
    t += 60_000;
    const timed = new MemoryStore({ now: () => t, sweepIntervalMs: 5 });
    await timed.decide({ ops: [w('k', 1000)], atomic: true });
    t += 2000;
    await new Promise((r) => setTimeout(r, 30));
    expect(timed.size()).toBe(0);
    await timed.close();
    await store.close();
  });
});
