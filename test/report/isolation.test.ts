/**
 * The report store beside the limiter, wired as the server wires them (createStore, then
 * createReport on its client): a TopKeys flush of many keys never makes a decision wait behind it,
 * and it is written in bounded chunks whose failure is counted, not retried.
 */
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { createReport } from '../../src/report/index.js';
import { RedisReportStore, totalsDropped } from '../../src/report/redis.js';
import { TOP_BUCKET_MS, type Totals } from '../../src/report/types.js';
import { createStore, type StoreSettings } from '../../src/store/factory.js';

const log = pino({ level: 'silent' });
const run = `t${process.pid}${Date.now()}`;
const T = Math.floor(Date.UTC(2026, 10, 25, 12, 0, 0) / TOP_BUCKET_MS) * TOP_BUCKET_MS;

const totals = (n: number): Totals[] =>
  Array.from({ length: n }, (_, i) => ({
    key: `k${i}`,
    account: `a${i % 50}`,
    requests: 1 + (i % 7),
    tokens: 100 + i,
    spendMicros: 10 + i,
  }));

const settings: [string, () => Exclude<StoreSettings, { kind: 'memory' }>][] = [
  ['redis', () => ({ kind: 'redis', url: inject('redisUrl') })],
  ['redis cluster', () => ({ kind: 'cluster', nodes: inject('redisClusterNodes') })],
];

describe.each(settings)('%s: report totals flush beside the limiter', (name, make) => {
  it('admits every concurrent decision in time and writes every total', async () => {
    const prefix = `${run}:${name.replace(' ', '-')}:`;
    // The production client: no offline queue, the default 50 ms command deadline, autopipelining.
    const handle = createStore({ ...make(), prefix });
    const report = createReport({
      redis: handle.redis!,
      namespace: prefix,
      now: Date.now,
      limiter: handle.limiter,
      policy: () => undefined,
      log,
      flushIntervalMs: 0,
    });
    try {
      expect(await handle.ready(5_000)).toBe(true);
      // 3 ZINCRBY per key: 36,000 commands, which on the limiter's connection held decisions past
      // their deadline (admitted fail-open).
      const n = 12_000;
      let flushing = true;
      const flush = report.store
        .addTotals(T, totals(n))
        .then(
          () => undefined,
          (err: unknown) => err,
        )
        .finally(() => {
          flushing = false;
        });
      const failures: unknown[] = [];
      let decided = 0;
      const decide = async (j: number): Promise<void> => {
        try {
          await handle.limiter.decide({
            ops: [{ kind: 'window', key: `iso:${j}`, limit: 1e9, windowMs: 60_000, cost: 1 }],
            atomic: false,
          });
          decided++;
        } catch (err) {
          failures.push(err);
        }
      };
      // The first wave goes out right behind the flush's first write, then waves until it is done.
      do await Promise.all(Array.from({ length: 20 }, (_, j) => decide(j)));
      while (flushing);
      const flushError = await flush;
      expect(failures.map((e) => String(e))).toEqual([]);
      expect(decided).toBeGreaterThanOrEqual(20);
      expect(flushError).toBeUndefined();

      const top = await report.store.topKeys('requests', T, T, n);
      expect(top).toHaveLength(n);
      expect(top.reduce((s, e) => s + e.value, 0)).toBe(totals(n).reduce((s, t) => s + t.requests, 0));
      const spend = await report.store.topKeys('spend', T, T, 1);
      expect(spend).toEqual([{ key: `k${n - 1}`, account: `a${(n - 1) % 50}`, value: 10 + n - 1 }]);
    } finally {
      await report.close();
      await handle.close();
    }
  });
});

describe('redis report store totals chunks', () => {
  const client = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
  afterAll(() => client.disconnect());

  it('writes every chunk, and ends the flush at a failed one, counting what it dropped', async () => {
    const ns = `${run}:chunks:`;
    const store = new RedisReportStore(client, ns, undefined, { chunk: 10 });
    try {
      // The spend set is a string: its ZINCRBYs fail (WRONGTYPE) in the chunks holding them.
      const spendKey = `${ns}{report}:top:spend:${T}`;
      await client.set(spendKey, 'not a zset');
      const before = (await totalsDropped.get()).values[0]?.value ?? 0;
      // 60 increments (requests, tokens, spend of 20 keys) in chunks of 7: the chunk of increments
      // 35–41 writes the last tokens and fails on the first spend ones.
      await expect(store.addTotals(T, totals(20))).rejects.toThrow(/20 of 60 increments dropped/);
      expect(((await totalsDropped.get()).values[0]?.value ?? 0) - before).toBe(20);
      expect(await client.get(spendKey)).toBe('not a zset');

      const requests = await store.topKeys('requests', T, T, 100);
      expect(requests).toHaveLength(20);
      expect(requests.find((e) => e.key === 'k3')?.value).toBe(4);
      const tokens = await store.topKeys('tokens', T, T, 100);
      expect(tokens).toHaveLength(20);
      expect(tokens[0]).toEqual({ key: 'k19', account: 'a19', value: 119 });
      expect(await client.pttl(`${ns}{report}:top:tokens:${T}`)).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
  });
});
