/** createStore and withFailureMode against a real unreachable address (nothing listens there). */
import { describe, expect, it, onTestFinished } from 'vitest';
import { RkError } from '../../src/errors.js';
import { createStore, withFailureMode } from '../../src/store/factory.js';
import { MemoryStore } from '../../src/store/memory.js';
import { type Decision, StoreUnavailableError } from '../../src/store/store.js';
import { freePort } from '../harness/redis.js';

const decision: Decision = {
  ops: [
    { kind: 'window', key: '{f}:w', limit: 7, windowMs: 1000, cost: 1 },
    { kind: 'budget', key: '{f}:b', limit: 100, periodEndMs: 0 },
  ],
  atomic: true,
};
const settle = {
  requestId: 'r',
  reservationKey: '{f}:res',
  onceKey: '{f}:once',
  onceTtlMs: 1000,
  windows: [],
  counters: [],
  release: true,
};

describe('store factory', () => {
  it('builds the memory store by default, with no Redis client', async () => {
    const handle = createStore({ kind: 'memory' });
    expect(handle.limiter).toBeInstanceOf(MemoryStore);
    expect(handle.redis).toBeUndefined();
    expect(await handle.ready()).toBe(true);
    expect((await handle.limiter.decide(decision)).admitted).toBe(true);
    await handle.close();
  });

  it('applies the failure mode when Redis cannot be reached', async () => {
    const handle = createStore({ kind: 'redis', url: `redis://127.0.0.1:${await freePort()}` });
    onTestFinished(() => handle.close());
    expect(handle.redis).toBeDefined();
    expect(await handle.ready(200)).toBe(false);
    expect(handle.limiter.healthy()).toBe(false);
    await expect(handle.limiter.decide(decision)).rejects.toBeInstanceOf(StoreUnavailableError);

    const failures: Error[] = [];
    const open = withFailureMode(handle.limiter, 'open', { onFailure: (e) => failures.push(e) });
    const r = await open.decide(decision);
    expect(r).toMatchObject({ admitted: true, denied: -1, expiredLeases: 0 });
    expect(r.states).toEqual([
      { ok: true, used: 0, remaining: 7, resetMs: 0, retryMs: 0 },
      { ok: true, used: 0, remaining: 100, resetMs: 0, retryMs: 0 },
    ]);
    expect(failures).toHaveLength(1);
    expect(open.serving()).toBe(true);
    await expect(open.settle(settle)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(open.release('{f}:res')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(failures).toHaveLength(3);

    const closed = withFailureMode(handle.limiter, 'closed', { onFailure: () => {} });
    const err = await closed.decide(decision).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RkError);
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    expect(closed.serving()).toBe(false);
  });

  it('lets bugs through instead of admitting', async () => {
    const store = withFailureMode(new MemoryStore({ sweepIntervalMs: 0 }), 'open', {
      onFailure: () => {
        throw new Error('not a store failure');
      },
    });
    await expect(
      store.decide({ ops: [{ kind: 'slot', key: 's', limit: 1, leaseMs: 1000 }], atomic: true }),
    ).rejects.toThrow(/reservation/);
    expect(store.serving()).toBe(true);
  });
});
