import { performance } from 'node:perf_hooks';
import type { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { RkError } from '../../src/errors.js';
import { type KeyRegistry, MemoryKeyRegistry, type Mutation } from '../../src/keys/registry.js';
import { RedisKeyRegistry } from '../../src/keys/registry-redis.js';
import type { StoredKey } from '../../src/keys/types.js';
import { connectRedis, readyWithin } from '../../src/store/factory.js';

const clients: (Redis | Cluster)[] = [];
let n = 0;

afterAll(() => {
  for (const c of clients) c.disconnect();
});

// The production client settings (fail fast, 50 ms command deadline, no offline queue).
const standalone = (): Redis => {
  const c = connectRedis({ kind: 'redis', url: inject('redisUrl') }) as Redis;
  clients.push(c);
  return c;
};
const cluster = (): Cluster => {
  const c = connectRedis({ kind: 'cluster', nodes: inject('redisClusterNodes') }) as Cluster;
  clients.push(c);
  return c;
};

const create =
  (rec: StoredKey): Mutation =>
  (before) => {
    if (before) throw new RkError('ALREADY_EXISTS', `key ${rec.id} exists`);
    return rec;
  };
const update =
  (patch: Partial<StoredKey>): Mutation =>
  (before) => {
    if (!before) throw new RkError('NOT_FOUND', 'no such key');
    return { ...before, ...patch };
  };
const remove: Mutation = (before) => {
  if (!before) throw new RkError('NOT_FOUND', 'no such key');
  return undefined;
};
const who = (action: 'create' | 'update' | 'disable' | 'delete') => ({ actor: 'ops', action });

const rejects = async (p: Promise<unknown>, code: string): Promise<RkError> => {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RkError);
  expect((err as RkError).code).toBe(code);
  return err as RkError;
};

type Factory = () => Promise<KeyRegistry>;

const backends: [string, () => Factory][] = [
  ['memory', () => async () => new MemoryKeyRegistry({ now: () => 1_700_000_000_000 })],
  [
    'redis',
    () => {
      const prefix = `rk:t${++n}:`;
      return () => RedisKeyRegistry.open({ client: standalone(), prefix });
    },
  ],
  [
    'redis cluster',
    () => {
      const prefix = `rk:t${++n}:`;
      return () => RedisKeyRegistry.open({ client: cluster(), prefix });
    },
  ],
];

describe.each(backends)('KeyRegistry conformance: %s', (_name, factoryOf) => {
  const open = async (): Promise<KeyRegistry> => factoryOf()();

  it('creates, reads through the store and the directory, and indexes the hash', async () => {
    const reg = await open();
    const v0 = reg.version;
    const res = await reg.write(
      'k1',
      create({ id: 'k1', hash: 'h1', account: 'acme', tier: 'pro' }),
      who('create'),
    );
    expect(res.before).toBeUndefined();
    expect(res.after).toEqual({ id: 'k1', hash: 'h1', account: 'acme', tier: 'pro' });
    expect(res.version).toBe(v0 + 1);
    expect(reg.version).toBe(v0 + 1);
    expect(await reg.get('k1')).toEqual(res.after);
    expect(reg.byId('k1')).toEqual(res.after);
    expect(reg.byHash('h1')?.id).toBe('k1');
    expect(reg.byHash('nope')).toBeUndefined();
    expect(await reg.get('nope')).toBeUndefined();
    await reg.close();
  });

  it('refuses a second create and a hash held by another id, writing nothing', async () => {
    const reg = await open();
    await reg.write('a', create({ id: 'a', hash: 'ha' }), who('create'));
    const v = reg.version;
    await rejects(reg.write('a', create({ id: 'a', hash: 'hx' }), who('create')), 'ALREADY_EXISTS');
    await rejects(reg.write('b', create({ id: 'b', hash: 'ha' }), who('create')), 'ALREADY_EXISTS');
    expect(await reg.get('b')).toBeUndefined();
    expect(reg.byHash('ha')?.id).toBe('a');
    expect(reg.version).toBe(v);
    const audit = await reg.listAudit({ pageSize: 0, pageToken: '' });
    expect(audit.items).toHaveLength(1);
    await reg.close();
  });

  it('moves the hash index on update and drops it on delete', async () => {
    const reg = await open();
    await reg.write('a', create({ id: 'a', hash: 'h-old', tier: 'free' }), who('create'));
    await reg.write('a', update({ hash: 'h-new', tier: 'pro', disabled: true }), who('update'));
    expect(reg.byHash('h-old')).toBeUndefined();
    expect(reg.byHash('h-new')).toMatchObject({ id: 'a', tier: 'pro', disabled: true });
    const res = await reg.write('a', remove, who('delete'));
    expect(res.after).toBeUndefined();
    expect(res.before).toMatchObject({ tier: 'pro' });
    expect(reg.byId('a')).toBeUndefined();
    expect(reg.byHash('h-new')).toBeUndefined();
    expect(await reg.get('a')).toBeUndefined();
    await rejects(reg.write('a', update({ tier: 'x' }), who('update')), 'NOT_FOUND');
    await reg.close();
  });

  it('pages by id with an account filter and rejects bad paging input', async () => {
    const reg = await open();
    for (const id of ['g', 'c', 'a', 'e', 'b', 'f', 'd']) {
      await reg.write(id, create({ id, account: id < 'd' ? 'x' : 'y' }), who('create'));
    }
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await reg.list({ pageSize: 3, pageToken: token });
      seen.push(...page.items.map((k) => k.id));
      token = page.nextPageToken;
      pages++;
    } while (token !== '');
    expect(seen).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
    expect(pages).toBe(3);
    const x = await reg.list({ pageSize: 0, pageToken: '', account: 'x' });
    expect(x.items.map((k) => k.id)).toEqual(['a', 'b', 'c']);
    expect(x.nextPageToken).toBe('');
    expect((await reg.all()).map((k) => k.id)).toEqual(seen);
    expect((await rejects(reg.list({ pageSize: -1, pageToken: '' }), 'INVALID_ARGUMENT')).field).toBe(
      'page_size',
    );
    expect((await rejects(reg.list({ pageSize: 2, pageToken: '!!' }), 'INVALID_ARGUMENT')).field).toBe(
      'page_token',
    );
    await reg.close();
  });

  it('audits every change with actor, action, before and after, newest first, paged and filtered', async () => {
    const reg = await open();
    await reg.write('a', create({ id: 'a', tier: 'free' }), { actor: 'alice', action: 'create' });
    await reg.write('b', create({ id: 'b' }), { actor: 'alice', action: 'create' });
    await reg.write('a', update({ disabled: true, disabledReason: 'abuse' }), {
      actor: 'bob',
      action: 'disable',
    });
    await reg.write('a', remove, { actor: 'bob', action: 'delete' });
    await reg.audit({
      actor: 'carol',
      action: 'review_flag',
      target: 'flag-1',
      after: { state: 'dismissed' },
    });

    const all = await reg.listAudit({ pageSize: 0, pageToken: '' });
    expect(all.items.map((e) => `${e.actor}:${e.action}:${e.target}`)).toEqual([
      'carol:review_flag:flag-1',
      'bob:delete:a',
      'bob:disable:a',
      'alice:create:b',
      'alice:create:a',
    ]);
    const disable = all.items[2]!;
    expect(disable.before).toEqual({ id: 'a', tier: 'free' });
    expect(disable.after).toEqual({ id: 'a', tier: 'free', disabled: true, disabledReason: 'abuse' });
    expect(typeof disable.atMs).toBe('number');
    expect(all.items[1]!.after).toBeUndefined();
    expect(all.items[4]!.before).toBeUndefined();

    const first = await reg.listAudit({ pageSize: 2, pageToken: '', target: 'a' });
    expect(first.items.map((e) => e.action)).toEqual(['delete', 'disable']);
    expect(first.nextPageToken).not.toBe('');
    const second = await reg.listAudit({ pageSize: 2, pageToken: first.nextPageToken, target: 'a' });
    expect(second.items.map((e) => e.action)).toEqual(['create']);
    expect(second.nextPageToken).toBe('');
    await rejects(reg.listAudit({ pageSize: 1, pageToken: 'garbage' }), 'INVALID_ARGUMENT');
    await reg.close();
  });

  it('serialises concurrent read-modify-writes on one key (none lost)', async () => {
    const reg = await open();
    await reg.write('c', create({ id: 'c', name: '0' }), who('create'));
    const bump: Mutation = (before) => ({ ...before!, name: String(Number(before!.name) + 1) });
    await Promise.all(Array.from({ length: 8 }, () => reg.write('c', bump, who('update'))));
    expect((await reg.get('c'))?.name).toBe('8');
    expect(reg.byId('c')?.name).toBe('8');
    await reg.close();
  });
});

describe('MemoryKeyRegistry', () => {
  it('keeps at most auditMax entries, dropping the oldest', async () => {
    const reg = new MemoryKeyRegistry({ auditMax: 3 });
    for (const id of ['a', 'b', 'c', 'd', 'e']) await reg.write(id, create({ id }), who('create'));
    const page = await reg.listAudit({ pageSize: 10, pageToken: '' });
    expect(page.items.map((e) => e.target)).toEqual(['e', 'd', 'c']);
  });

  it('hands out snapshots: mutating a written record does not change the directory', async () => {
    const reg = new MemoryKeyRegistry();
    const rec: StoredKey = { id: 'a', tier: 'free' };
    await reg.write('a', create(rec), who('create'));
    rec.tier = 'hacked';
    expect(reg.byId('a')?.tier).toBe('free');
  });
});

/** Spins on the event loop until `cond` holds; returns the ms it took. */
const until = async (cond: () => boolean, timeoutMs = 2000): Promise<number> => {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error('condition not reached');
    await new Promise((r) => setImmediate(r));
  }
  return performance.now() - t0;
};

const pct = (xs: number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)]!;

describe.each([
  ['redis', () => standalone()],
  ['redis cluster', () => cluster()],
] as const)('two instances on one %s', (_name, clientOf) => {
  it('a change written on A is applied on B: disable, lower a cap, delete; propagation measured', async () => {
    const prefix = `rk:t${++n}:`;
    const a = await RedisKeyRegistry.open({ client: clientOf(), prefix });
    const b = await RedisKeyRegistry.open({ client: clientOf(), prefix });
    await a.write('k', create({ id: 'k', hash: 'hk', caps: { monthlyTokens: 1000 } }), who('create'));
    await until(() => b.byHash('hk') !== undefined);

    await a.write('k', update({ disabled: true, disabledReason: 'abuse' }), who('disable'));
    await until(() => b.byId('k')?.disabled === true);
    expect(b.byHash('hk')?.disabledReason).toBe('abuse');

    await a.write('k', update({ caps: { monthlyTokens: 10 } }), who('update'));
    await until(() => b.byId('k')?.caps?.monthlyTokens === 10);

    // Propagation: from A's write returning (A has seen its own notification) to B applying it,
    // and from the write's start to B applying it.
    const afterReturn: number[] = [];
    const fromStart: number[] = [];
    let immediate = 0;
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      const { version } = await a.write('k', update({ name: String(i) }), who('update'));
      const t1 = performance.now();
      if (b.version >= version) immediate++;
      await until(() => b.version >= version);
      const t2 = performance.now();
      afterReturn.push(t2 - t1);
      fromStart.push(t2 - t0);
    }
    expect(b.byId('k')?.name).toBe('199');
    // Every live instance confirms a change before the write returns.
    expect(immediate).toBe(200);
    console.log(
      `[${_name}] propagation A→B over 200 writes: write start→applied on B p50 ${pct(fromStart, 0.5).toFixed(2)} ms, ` +
        `p99 ${pct(fromStart, 0.99).toFixed(2)} ms; already applied on B when A's write returned: ${immediate}/200; ` +
        `A returned→B applied p99 ${pct(afterReturn, 0.99).toFixed(3)} ms`,
    );

    await b.write('k', remove, who('delete'));
    await until(() => a.byId('k') === undefined && a.byHash('hk') === undefined);
    await a.close();
    await b.close();
  });

  it('catches up by the periodic version check when a notification is lost', async () => {
    const prefix = `rk:t${++n}:`;
    const raw = clientOf();
    await readyWithin(raw, 5000);
    const a = await RedisKeyRegistry.open({ client: clientOf(), prefix, resyncMs: 50 });
    // A write that bypasses the registry publishes nothing: only the resync can find it.
    const rec = `${prefix}{keys}:rec`;
    await raw.hset(rec, 'ghost', JSON.stringify({ id: 'ghost', hash: 'hg', disabled: true }));
    await raw.hset(`${prefix}{keys}:hash`, 'hg', 'ghost');
    await raw.incr(`${prefix}{keys}:ver`);
    await until(() => a.byHash('hg')?.disabled === true);
    await a.close();
  });

  it('an instance that stopped confirming holds a write up at most notifyTimeoutMs; stale ones are forgotten', async () => {
    const prefix = `rk:t${++n}:`;
    const raw = clientOf();
    await readyWithin(raw, 5000);
    const live = `${prefix}{keys}:live`;
    await raw.hset(live, 'crashed', String(Date.now()), 'long-gone', String(Date.now() - 3_600_000));
    const a = await RedisKeyRegistry.open({ client: clientOf(), prefix, notifyTimeoutMs: 50 });
    const res = await a.write('k', create({ id: 'k' }), who('create'));
    expect(res.after).toEqual({ id: 'k' });
    expect(a.byId('k')).toEqual({ id: 'k' });
    expect(await raw.hexists(live, 'long-gone')).toBe(0);
    expect(await raw.hexists(live, 'crashed')).toBe(1);
    await a.close();
    expect(await raw.hlen(live)).toBe(1);
  });

  it('resyncs on a version gap in the notifications', async () => {
    const prefix = `rk:t${++n}:`;
    const raw = clientOf();
    await readyWithin(raw, 5000);
    const a = await RedisKeyRegistry.open({ client: clientOf(), prefix, resyncMs: 60_000 });
    await raw.hset(`${prefix}{keys}:rec`, 'x', JSON.stringify({ id: 'x', tier: 'pro' }));
    await raw.set(`${prefix}{keys}:ver`, '5');
    const msg = JSON.stringify({ v: 5, id: 'x', rec: { id: 'x', tier: 'pro' } });
    const channel = `${prefix}{keys}:changes`;
    await (_name === 'redis cluster' ? raw.spublish(channel, msg) : raw.publish(channel, msg));
    await until(() => a.version === 5 && a.byId('x')?.tier === 'pro');
    await a.close();
  });
});

describe('RedisKeyRegistry without Redis', () => {
  it('starts with Redis unreachable: empty directory, writes UNAVAILABLE', async () => {
    const down = connectRedis({ kind: 'redis', url: 'redis://127.0.0.1:1' }) as Redis;
    clients.push(down);
    const reg = await RedisKeyRegistry.open({ client: down, prefix: 'rk:down:', startTimeoutMs: 200 });
    expect(reg.byId('x')).toBeUndefined();
    await rejects(reg.write('x', create({ id: 'x' }), who('create')), 'UNAVAILABLE');
    await rejects(reg.get('x'), 'UNAVAILABLE');
    await reg.close();
  });
});
