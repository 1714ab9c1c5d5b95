import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { RkError } from '../../src/errors.js';
import { MemoryReportStore } from '../../src/report/memory.js';
import { RedisReportStore } from '../../src/report/redis.js';
import type { Alert, FlagInput, ReportStore } from '../../src/report/types.js';

const T0 = Date.UTC(2026, 10, 25, 12, 0, 0);
const M = 60_000;

const input = (over: Partial<FlagInput> = {}): FlagInput => ({
  key: 'k1',
  account: 'acme',
  signal: 'excessive_request_rate',
  observed: 0.95,
  threshold: 0.9,
  windowMs: 10 * M,
  detail: 'held',
  sinceMs: T0 - 10 * M,
  atMs: T0,
  ...over,
});

const clients: (Redis | Cluster)[] = [];
const redis = (): Redis => {
  const c = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
  clients.push(c);
  return c;
};
const cluster = (): Cluster => {
  const c = new Cluster(
    inject('redisClusterNodes').map((n) => ({
      host: n.slice(0, n.lastIndexOf(':')),
      port: Number(n.slice(n.lastIndexOf(':') + 1)),
    })),
  );
  clients.push(c);
  return c;
};
afterAll(() => {
  for (const c of clients) c.disconnect();
});
// Namespaced per run, so a shared server (REDIS_URL) is safe.
const run = `t${process.pid}${Date.now()}`;
let ns = 0;

const makers: [string, () => ReportStore][] = [
  ['memory', () => new MemoryReportStore(() => T0)],
  ['redis', () => new RedisReportStore(redis(), `${run}:${++ns}:`)],
  ['redis cluster', () => new RedisReportStore(cluster(), `${run}:${++ns}:`)],
];

describe.each(makers)('%s report store', (_name, make) => {
  it('keeps one open flag per key and signal, updated with the latest figures', async () => {
    const s = make();
    const a = await s.raiseFlag(input());
    expect(a.outcome).toBe('created');
    const b = await s.raiseFlag(input({ observed: 0.97, atMs: T0 + M, detail: 'later' }));
    expect(b.outcome).toBe('updated');
    expect(b.flag).toMatchObject({
      id: a.flag!.id,
      observed: 0.97,
      firstSeenMs: T0,
      lastSeenMs: T0 + M,
      detail: 'later',
      state: 'open',
    });
    const other = await s.raiseFlag(input({ signal: 'retry_storm' }));
    expect(other.outcome).toBe('created');
    expect(other.flag!.id).not.toBe(a.flag!.id);
    expect(await s.getFlag(a.flag!.id)).toEqual(b.flag);
    expect(await s.getFlag('f9999999999')).toBeUndefined();
    await s.close();
  });

  it('reviews a flag; the same episode is not raised again, a new one is', async () => {
    const s = make();
    const { flag } = await s.raiseFlag(input());
    const reviewed = await s.reviewFlag(flag!.id, 'dismissed', 'batch job', 'ops@x', T0 + 2 * M);
    expect(reviewed).toMatchObject({
      state: 'dismissed',
      note: 'batch job',
      reviewedBy: 'ops@x',
      reviewedAtMs: T0 + 2 * M,
    });
    expect((await s.raiseFlag(input({ atMs: T0 + 3 * M }))).outcome).toBe('suppressed');
    const again = await s.raiseFlag(input({ sinceMs: T0 + 5 * M, atMs: T0 + 15 * M }));
    expect(again.outcome).toBe('created');
    expect(again.flag!.id).not.toBe(flag!.id);
    // Re-reviewing the closed flag changes its note but leaves the new open flag alone.
    await s.reviewFlag(flag!.id, 'reviewed', 'contacted', 'ops@y', T0 + 16 * M);
    expect((await s.raiseFlag(input({ atMs: T0 + 17 * M }))).outcome).toBe('updated');
    await expect(s.reviewFlag('f0000000404', 'reviewed', '', 'x', T0)).rejects.toMatchObject({
      code: 'NOT_FOUND',
    } satisfies Partial<RkError>);
    await s.close();
  });

  it('lists newest first, filtered and paged', async () => {
    const s = make();
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await s.raiseFlag(
        input({
          key: `k${i}`,
          account: i % 2 ? 'odd' : 'even',
          signal: i < 4 ? 'retry_storm' : 'runaway_requests',
        }),
      );
      ids.push(r.flag!.id);
    }
    await s.reviewFlag(ids[0]!, 'reviewed', '', 'x', T0);
    const all = await s.listFlags({}, 3, '');
    expect(all.flags.map((f) => f.id)).toEqual([ids[6], ids[5], ids[4]]);
    const p2 = await s.listFlags({}, 3, all.nextPageToken);
    expect(p2.flags.map((f) => f.id)).toEqual([ids[3], ids[2], ids[1]]);
    const p3 = await s.listFlags({}, 3, p2.nextPageToken);
    expect(p3).toEqual({ flags: [expect.objectContaining({ id: ids[0] })], nextPageToken: '' });
    expect(
      (await s.listFlags({ account: 'even', signal: 'retry_storm' }, 10, '')).flags.map((f) => f.key),
    ).toEqual(['k2', 'k0']);
    expect((await s.listFlags({ state: 'reviewed' }, 10, '')).flags.map((f) => f.id)).toEqual([ids[0]]);
    expect((await s.listFlags({ state: 'open', account: 'odd' }, 2, '')).nextPageToken).not.toBe('');
    await s.close();
  });

  it('claims once', async () => {
    const s = make();
    expect(await s.claimOnce('c1', 60_000)).toBe(true);
    expect(await s.claimOnce('c1', 60_000)).toBe(false);
    expect(await s.claimOnce('c2', 60_000)).toBe(true);
    await s.close();
  });

  it('fans alerts out to subscribers', async () => {
    const s = make();
    const got: Alert[] = [];
    const off = s.subscribe((a) => got.push(a));
    if (s instanceof RedisReportStore) await s.subscribed();
    const alert: Alert = {
      atMs: T0,
      crossing: {
        key: 'k',
        account: 'a',
        metric: 'monthly_spend',
        share: 0.8,
        used: 80,
        limit: 100,
        period: '2026-11',
      },
    };
    await s.publish(alert);
    await expect.poll(() => got.length).toBe(1);
    expect(got[0]).toEqual(alert);
    off();
    await s.close();
  });

  it('ranks keys by totals over a window', async () => {
    const s = make();
    await s.addTotals(T0, [
      { key: 'a', account: 'x', requests: 10, tokens: 100, spendMicros: 5 },
      { key: 'b', account: 'y', requests: 3, tokens: 900, spendMicros: 0 },
    ]);
    await s.addTotals(T0 + M, [{ key: 'b', account: 'y', requests: 9, tokens: 1, spendMicros: 7 }]);
    await s.addTotals(T0 + 5 * M, [{ key: 'c', account: 'y', requests: 100, tokens: 0, spendMicros: 0 }]);
    expect(await s.topKeys('requests', T0, T0 + 2 * M - 1, 10)).toEqual([
      { key: 'b', account: 'y', value: 12 },
      { key: 'a', account: 'x', value: 10 },
    ]);
    expect(await s.topKeys('tokens', T0, T0 + 6 * M, 1)).toEqual([{ key: 'b', account: 'y', value: 901 }]);
    expect(await s.topKeys('spend', T0, T0 + 6 * M, 5)).toEqual([
      { key: 'b', account: 'y', value: 7 },
      { key: 'a', account: 'x', value: 5 },
    ]);
    expect(await s.topKeys('requests', T0 + 5 * M, T0 + 6 * M, 5)).toEqual([
      { key: 'c', account: 'y', value: 100 },
    ]);
    await s.close();
  });
});

describe.each(makers)('%s report store page tokens', (_name, make) => {
  it('rejects a page token it did not make', async () => {
    await expect(make().listFlags({}, 10, 'zzz')).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      field: 'page_token',
    });
  });
});

describe('redis report store', () => {
  it('keeps flags across store instances (a restart)', async () => {
    const a = new RedisReportStore(redis(), `${run}:restart:`);
    const { flag } = await a.raiseFlag(input());
    await a.close();
    const b = new RedisReportStore(redis(), `${run}:restart:`);
    expect(await b.getFlag(flag!.id)).toEqual(flag);
    expect((await b.raiseFlag(input({ atMs: T0 + M }))).outcome).toBe('updated');
    await b.close();
  });
});
