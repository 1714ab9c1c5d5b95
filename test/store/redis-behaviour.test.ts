/** Redis-only behaviour: shared limits across instances, script reloads, round trips, TTLs, failures. */
import { type Command, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFinished } from 'vitest';
import { RkError } from '../../src/errors.js';
import { createStore, withFailureMode } from '../../src/store/factory.js';
import { IDLE_BATCH_KEYS, MAX_BATCH, MAX_BATCH_KEYS } from '../../src/store/redis.js';
import type { Decision, Op } from '../../src/store/store.js';
import { StoreUnavailableError } from '../../src/store/store.js';
import { startRedis, startRedisSentinel } from '../harness/redis.js';
import { redisStore, uniquePrefix } from './helpers.js';

const url = inject('redisUrl');

/** Polls until cond holds (not a speed assertion: fails only after 10 s). */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const win = (key: string, limit: number, cost = 1, windowMs = 60_000): Op => ({
  kind: 'window',
  key,
  limit,
  windowMs,
  cost,
});

/** Records every command a Redis server receives from clients (not those run inside scripts). */
async function monitor(redisUrl: string) {
  const conn = new Redis(redisUrl, { protocol: 2 });
  const mon = await conn.monitor();
  const marker = new Redis(redisUrl, { protocol: 2 });
  const seen: string[][] = [];
  mon.on('monitor', (_time: string, args: string[], source: string) => {
    if (source !== 'lua') seen.push(args.map((a, i) => (i === 0 ? a.toLowerCase() : a)));
  });
  let n = 0;
  return {
    /** Waits until every command sent before this call has been seen; returns those, markers excluded. */
    async drain(): Promise<string[][]> {
      const id = `marker-${n++}`;
      await marker.echo(id);
      await until(() => seen.some((c) => c[0] === 'echo' && c[1] === id), 'monitor marker');
      const out = seen.splice(0).filter((c) => c[0] !== 'echo');
      return out;
    },
    close() {
      mon.disconnect();
      conn.disconnect();
      marker.disconnect();
    },
  };
}

describe('redis store', () => {
  let admin: Redis;
  beforeAll(async () => {
    admin = new Redis(url);
  });
  afterAll(() => {
    admin.disconnect();
  });

  it('two instances with skewed local clocks share one limit and one clock', async () => {
    const prefix = uniquePrefix();
    const a = await redisStore({ kind: 'redis', url }, { prefix, localClock: () => Date.now() + 3_600_000 });
    const b = await redisStore({ kind: 'redis', url }, { prefix, localClock: () => Date.now() - 7_200_000 });
    await Promise.all([a.store.syncClock(), b.store.syncClock()]);
    expect(Math.abs(a.store.now() - b.store.now())).toBeLessThan(1000);
    const [sec] = await admin.time();
    expect(Math.abs(a.store.now() - Number(sec) * 1000)).toBeLessThan(2000);

    const d: Decision = { ops: [win('{shared}:rpm', 50)], atomic: true };
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => (i % 2 ? a.store : b.store).decide(d)),
    );
    expect(results.filter((r) => r.admitted)).toHaveLength(50);
    const nows = results.map((r) => r.nowMs);
    expect(Math.max(...nows) - Math.min(...nows)).toBeLessThan(1000);
    await a.close();
    await b.close();
  });

  it('reloads scripts transparently after SCRIPT FLUSH mid-run', async () => {
    const s = await redisStore({ kind: 'redis', url });
    const d: Decision = { ops: [win('{flush}:w', 1000)], atomic: true };
    const runs: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) {
      runs.push(s.store.decide(d));
      if (i === 100 || i === 200) runs.push(admin.script('FLUSH'));
      if (i % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    await Promise.all(runs);
    const r = await s.store.decide({ ...d, dryRun: true, ops: [win('{flush}:w', 1000, 0)] });
    expect(r.states[0]!.used).toBe(300);
    await s.close();
  });

  it('sends one EVALSHA per decision (or per batch issued together), settle and release, however many ops', async () => {
    const s = await redisStore({ kind: 'redis', url }, { clockRefreshMs: 3_600_000 });
    const ops: Op[] = [
      {
        kind: 'slot',
        key: '{acct}:conc:key',
        limit: 5,
        leaseMs: 60_000,
        expiredKey: '{acct}:expired',
        expiredWindowMs: 60_000,
      },
      { kind: 'slot', key: '{acct}:conc:model', limit: 5, leaseMs: 60_000 },
      { kind: 'budget', key: '{acct}:month:tokens', limit: 1e9, periodEndMs: Date.now() + 1e9 },
      { kind: 'budget', key: '{acct}:month:spend', limit: 1e9, periodEndMs: Date.now() + 1e9 },
      win('{acct}:rpm:key', 100),
      win('{acct}:rpm:model', 100),
      win('{acct}:tpm:key', 100_000, 500),
      win('{acct}:tpm:in', 100_000, 300),
      win('{acct}:tpm:out', 100_000, 200),
      win('{acct}:rpd', 10_000, 1, 86_400_000),
    ];
    const decision = (id: string): Decision => ({
      ops,
      atomic: true,
      reservation: { requestId: id, key: `{acct}:res:${id}`, ttlMs: 600_000 },
    });
    await s.store.decide(decision('warm'));
    await s.store.syncClock();
    const mon = await monitor(url);
    await admin.config('RESETSTAT');
    await mon.drain();

    // Issued one after another: one call each.
    for (let i = 0; i < 2; i++) expect((await s.store.decide(decision(`r${i}`))).admitted).toBe(true);
    // Issued together: they share one call, each decided on its own.
    const results = await Promise.all([2, 3].map((i) => s.store.decide(decision(`r${i}`))));
    expect(results.every((r) => r.admitted)).toBe(true);
    expect(results.map((r) => r.states[0]!.used)).toEqual([4, 5]);
    await s.store.settle({
      requestId: 'r0',
      reservationKey: '{acct}:res:r0',
      onceKey: '{acct}:once:r0',
      onceTtlMs: 600_000,
      windows: [{ key: '{acct}:tpm:key', windowMs: 60_000, limit: 100_000, amount: 10 }],
      counters: [
        { key: '{acct}:month:tokens', amount: 10, ttlMs: 1e9, limit: 1e9, periodEndMs: Date.now() + 1e9 },
      ],
      release: true,
    });
    await s.store.release('{acct}:res:r1');
    const sent = (await mon.drain()).filter((c) => c[0] !== 'config');
    expect(sent.map((c) => c[0])).toEqual(Array(5).fill('evalsha'));
    const stats = await admin.info('commandstats');
    expect(stats).toMatch(/cmdstat_evalsha:calls=5,/);
    // TIME and the data commands run inside the script; nothing else came from a client.
    expect(stats).not.toMatch(/cmdstat_(eval|script|multi|exec|ping):/);
    mon.close();
    await s.close();
  });

  it('splits decisions issued together into calls of at most MAX_BATCH, in order', async () => {
    const s = await redisStore({ kind: 'redis', url }, { clockRefreshMs: 3_600_000 });
    await s.store.decide({ ops: [win('{split}:w', 100)], atomic: true });
    await s.store.syncClock();
    const mon = await monitor(url);
    await mon.drain();
    const n = 2 * MAX_BATCH + 1;
    const results = await Promise.all(
      Array.from({ length: n }, () => s.store.decide({ ops: [win('{split}:w', 100)], atomic: true })),
    );
    // Arrival order holds across calls: each decision sees every earlier one's cost.
    expect(results.map((r) => r.states[0]!.used)).toEqual(Array.from({ length: n }, (_, i) => i + 2));
    const sent = await mon.drain();
    expect(sent.map((c) => c[0])).toEqual(['evalsha', 'evalsha', 'evalsha']);
    // decide.lua's ARGV[2]: the decisions a call carries (EVALSHA sha numkeys key… clock count …).
    // One key a decision: IDLE_BATCH_KEYS is never reached before MAX_BATCH.
    expect(IDLE_BATCH_KEYS).toBeGreaterThan(MAX_BATCH);
    expect(sent.map((c) => Number(c[3 + Number(c[2]) + 1]))).toEqual([MAX_BATCH, MAX_BATCH, 1]);
    mon.close();
    await s.close();
  });

  it('closes a call once its decisions carry MAX_BATCH_KEYS keys (IDLE_BATCH_KEYS while none is in flight)', async () => {
    const s = await redisStore({ kind: 'redis', url }, { clockRefreshMs: 3_600_000 });
    const ops = Array.from({ length: 10 }, (_, i) => win(`{keys}:w${i}`, 1000));
    await s.store.decide({ ops, atomic: true });
    await s.store.syncClock();
    const mon = await monitor(url);
    await mon.drain();
    const perCall = Math.ceil(MAX_BATCH_KEYS / ops.length);
    expect(perCall).toBeLessThan(MAX_BATCH);
    const n = 2 * perCall + 1;
    const results = await Promise.all(Array.from({ length: n }, () => s.store.decide({ ops, atomic: true })));
    expect(results.map((r) => r.states[9]!.used)).toEqual(Array.from({ length: n }, (_, i) => i + 2));
    const sent = await mon.drain();
    // The first call leaves while Redis is idle; the next one fills up behind it.
    const first = Math.ceil(IDLE_BATCH_KEYS / ops.length);
    expect(first).toBeLessThan(perCall);
    expect(sent.map((c) => Number(c[3 + Number(c[2]) + 1]))).toEqual([first, perCall, n - first - perCall]);
    mon.close();
    await s.close();
  });

  it('gives every key it writes a TTL', async () => {
    const prefix = uniquePrefix();
    let t = Date.now();
    const s = await redisStore({ kind: 'redis', url }, { prefix, testClock: () => t });
    const lease: Op = {
      kind: 'slot',
      key: '{k}:conc',
      limit: 2,
      leaseMs: 1000,
      expiredKey: '{k}:expired',
      expiredWindowMs: 60_000,
    };
    for (let i = 0; i < 3; i++) {
      await s.store.decide({
        ops: [lease, win('{k}:rpm', 10), win('{k}:tok', 1000, 50, 1000)],
        atomic: true,
        reservation: { requestId: `r${i}`, key: `{k}:res:r${i}`, ttlMs: 60_000 },
      });
      await s.store.decide({ ops: [win('{g1}:a', 5), win('{g2}:b', 5)], atomic: false });
    }
    await s.store.settle({
      requestId: 'r0',
      reservationKey: '{k}:res:r0',
      onceKey: '{k}:once:r0',
      onceTtlMs: 60_000,
      windows: [{ key: '{k}:tok', windowMs: 1000, limit: 1000, amount: 70 }],
      counters: [{ key: '{k}:month', amount: 70, ttlMs: 60_000, limit: 1e6, periodEndMs: t + 60_000 }],
      release: false,
    });
    t += 1500; // the leases expire and are counted in {k}:expired
    await s.store.decide({
      ops: [lease],
      atomic: true,
      reservation: { requestId: 'late', key: '{k}:res:late', ttlMs: 60_000 },
    });
    const keys = await admin.keys(`${prefix}*`);
    expect(keys.length).toBeGreaterThanOrEqual(10);
    for (const k of keys) {
      const ttl = await admin.pttl(k);
      expect({ k, ok: ttl > 0 }).toEqual({ k, ok: true });
    }
    await s.close();
  });

  it('survives Redis being killed mid-load and recovers after restart: open admits, closed answers UNAVAILABLE', async () => {
    const server = await startRedis();
    const handle = createStore({ kind: 'redis', url: server.url, prefix: uniquePrefix() });
    onTestFinished(async () => {
      await handle.close();
      await server.stop(true);
    });
    expect(await handle.ready()).toBe(true);
    let failures = 0;
    const open = withFailureMode(handle.limiter, 'open', { onFailure: () => failures++ });
    const closed = withFailureMode(handle.limiter, 'closed', { onFailure: () => failures++ });
    const d: Decision = { ops: [win('{kill}:w', 1_000_000)], atomic: true };
    const seen = { ok: 0, openAdmittedDown: 0, unavailable: 0, other: [] as unknown[] };
    let down = false;
    let stop = false;
    const load = (async () => {
      while (!stop) {
        await Promise.all([
          open.decide(d).then((r) => {
            if (!r.admitted) seen.other.push(r);
            else if (down) seen.openAdmittedDown++;
          }),
          closed.decide(d).then(
            () => {
              seen.ok++;
            },
            (err) => {
              if (err instanceof RkError && err.code === 'UNAVAILABLE') seen.unavailable++;
              else seen.other.push(err);
            },
          ),
        ]);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await until(() => seen.ok > 20, 'traffic before the kill');
    down = true;
    await server.stop(true);
    await until(() => seen.unavailable > 10 && seen.openAdmittedDown > 10, 'decisions while down');
    expect(handle.limiter.healthy()).toBe(false);
    expect(closed.serving()).toBe(false);
    expect(open.serving()).toBe(true);
    await expect(open.release('{kill}:res')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(
      open.settle({
        requestId: 'x',
        reservationKey: '{kill}:res',
        onceKey: '{kill}:once',
        onceTtlMs: 1000,
        windows: [],
        counters: [],
        release: true,
      }),
    ).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    const restarted = await startRedis({ port: server.port });
    onTestFinished(() => restarted.stop(true));
    const okBefore = seen.ok;
    down = false;
    await until(() => seen.ok > okBefore + 20 && handle.limiter.healthy(), 'recovery');
    expect(closed.serving()).toBe(true);
    stop = true;
    await load;
    expect(seen.other).toEqual([]);
    expect(failures).toBeGreaterThan(0);
  });

  it('a hung Redis fails decisions within the command timeout, then recovers', async () => {
    const server = await startRedis();
    const handle = createStore({
      kind: 'redis',
      url: server.url,
      prefix: uniquePrefix(),
      commandTimeoutMs: 50,
    });
    onTestFinished(async () => {
      await handle.close();
      await server.stop(true);
    });
    expect(await handle.ready()).toBe(true);
    const d: Decision = { ops: [win('{hung}:w', 100)], atomic: true };
    expect((await handle.limiter.decide(d)).admitted).toBe(true);
    server.pause();
    await expect(handle.limiter.decide(d)).rejects.toBeInstanceOf(StoreUnavailableError);
    const closed = withFailureMode(handle.limiter, 'closed', { onFailure: () => {} });
    await expect(closed.decide(d)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(closed.serving()).toBe(false);
    server.resume();
    // No decision is sent: the store notices the recovery by itself.
    await until(() => handle.limiter.healthy(), 'recovery');
    expect(closed.serving()).toBe(true);
    expect((await handle.limiter.decide(d)).admitted).toBe(true);
  });

  it('takes a reply that came in while the event loop was busy past the command timeout', async () => {
    const handle = createStore({ kind: 'redis', url, prefix: uniquePrefix(), commandTimeoutMs: 50 });
    onTestFinished(() => handle.close());
    expect(await handle.ready()).toBe(true);
    const failures: Error[] = [];
    const open = withFailureMode(handle.limiter, 'open', { onFailure: (e) => failures.push(e) });
    const d: Decision = { ops: [win('{busy}:w', 1)], atomic: true };
    const first = open.decide(d);
    // The decision is sent in this turn's check phase; the next immediate blocks the loop for longer
    // than the deadline while Redis answers (a long turn or GC pause under load).
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        const until = performance.now() + 250;
        while (performance.now() < until);
        resolve();
      }),
    );
    const r = await first;
    expect(failures).toEqual([]);
    expect(handle.limiter.healthy()).toBe(true);
    expect(r.states[0]).toMatchObject({ ok: true, used: 1 });
    // Redis applied it once: a second decision is refused by a limit of 1.
    expect((await open.decide(d)).admitted).toBe(false);
  });

  it('a script error is a bug, not an outage', async () => {
    const s = await redisStore({ kind: 'redis', url });
    await admin.set(`${s.store.prefix}{bug}:w`, 'not a hash');
    await expect(s.store.decide({ ops: [win('{bug}:w', 1)], atomic: true })).rejects.toThrow(/WRONGTYPE/);
    expect(s.store.healthy()).toBe(true);
    // Decisions sharing a call with it are decided as if alone.
    const [before, bad, after] = await Promise.allSettled([
      s.store.decide({ ops: [win('{ok}:a', 5)], atomic: true }),
      s.store.decide({ ops: [win('{bug}:w', 1)], atomic: true }),
      s.store.decide({ ops: [win('{ok}:b', 5, 2)], atomic: true }),
    ]);
    expect(bad).toMatchObject({
      status: 'rejected',
      reason: { message: expect.stringMatching(/WRONGTYPE/) },
    });
    expect(before).toMatchObject({ status: 'fulfilled', value: { admitted: true } });
    expect(after).toMatchObject({ status: 'fulfilled', value: { admitted: true, states: [{ used: 2 }] } });
    await s.close();
  });
});

describe('redis cluster store', () => {
  const nodes = inject('redisClusterNodes');

  it('runs a non-atomic decision across slots as one script per slot, merged in op order', async () => {
    const s = await redisStore({ kind: 'cluster', nodes });
    const mons = await Promise.all(nodes.map((n) => monitor(`redis://${n}`)));
    await s.store.decide({ ops: [win('{a}:x', 1)], atomic: false });
    await s.store.syncClock();
    await Promise.all(mons.map((m) => m.drain()));
    const ops: Op[] = [
      win('{a}:x', 5),
      win('{b}:x', 0),
      win('{c}:x', 5, 2),
      win('{a}:y', 5, 6),
      win('{b}:z', 5),
    ];
    // All three scripts are issued before any reply can arrive (none waits for another).
    const client = s.redis as unknown as { sendCommand: (c: Command) => unknown };
    const send = client.sendCommand.bind(client);
    let issued = 0;
    client.sendCommand = (c) => {
      if (c.name === 'evalsha') issued++;
      return send(c);
    };
    const pending = s.store.decide({ ops, atomic: false });
    // Sent at the end of this turn, before any reply could be read.
    await new Promise(setImmediate);
    expect(issued).toBe(3);
    const r = await pending;
    client.sendCommand = send;
    expect(r.admitted).toBe(false);
    expect(r.denied).toBe(-1);
    expect(r.states.map((st) => st.ok)).toEqual([true, false, true, false, true]);
    expect(r.states.map((st) => st.used)).toEqual([2, 0, 2, 0, 1]);
    const sent = (await Promise.all(mons.map((m) => m.drain()))).flat();
    expect(sent.map((c) => c[0])).toEqual(['evalsha', 'evalsha', 'evalsha']);
    for (const m of mons) m.close();
    await s.close();
  });

  it('refuses an atomic decision whose keys span slots', async () => {
    const s = await redisStore({ kind: 'cluster', nodes });
    await expect(s.store.decide({ ops: [win('{a}:x', 5), win('{b}:x', 5)], atomic: true })).rejects.toThrow(
      /slots/,
    );
    await s.close();
  });

  it('decisions issued together share one script per slot, each answered with its own result', async () => {
    const s = await redisStore({ kind: 'cluster', nodes });
    const tags = ['{p}', '{q}', '{r}'];
    // Three hash tags, three slots: a call carries the decisions of one slot only.
    await Promise.all(tags.map((t) => s.store.decide({ ops: [win(`${t}:x`, 1, 0)], atomic: true })));
    await s.store.syncClock();
    const mons = await Promise.all(nodes.map((n) => monitor(`redis://${n}`)));
    await Promise.all(mons.map((m) => m.drain()));
    // Two decisions per tag; the second of each sees the first's cost (arrival order within a call).
    const results = await Promise.all(
      tags.flatMap((t, i) => [
        s.store.decide({ ops: [win(`${t}:x`, 10, i + 1)], atomic: true }),
        s.store.decide({ ops: [win(`${t}:x`, 10, i + 1)], atomic: true }),
      ]),
    );
    expect(results.map((r) => r.states[0]!.used)).toEqual([1, 2, 2, 4, 3, 6]);
    const sent = (await Promise.all(mons.map((m) => m.drain()))).flat();
    expect(sent.map((c) => c[0])).toEqual(['evalsha', 'evalsha', 'evalsha']);
    // decide.lua's ARGV[2]: the decisions a call carries (EVALSHA sha numkeys key… clock count …).
    expect(sent.map((c) => c[3 + Number(c[2]) + 1])).toEqual(['2', '2', '2']);
    for (const m of mons) m.close();
    await s.close();
  });

  it('one script per atomic decision on the cluster too', async () => {
    const s = await redisStore({ kind: 'cluster', nodes });
    const mons = await Promise.all(nodes.map((n) => monitor(`redis://${n}`)));
    const ops = Array.from({ length: 10 }, (_, i) => win(`{acct9}:w${i}`, 10));
    await s.store.decide({ ops, atomic: true });
    await s.store.syncClock();
    await Promise.all(mons.map((m) => m.drain()));
    for (let i = 0; i < 3; i++) await s.store.decide({ ops, atomic: true });
    const sent = (await Promise.all(mons.map((m) => m.drain()))).flat();
    expect(sent.map((c) => c[0])).toEqual(['evalsha', 'evalsha', 'evalsha']);
    for (const m of mons) m.close();
    await s.close();
  });
});

describe('redis sentinel store', () => {
  it('finds the master through Sentinel and decides there', async () => {
    const master = await startRedis();
    onTestFinished(() => master.stop());
    const sentinel = await startRedisSentinel(master.port, 'rkmaster');
    onTestFinished(() => sentinel.stop());
    const handle = createStore({
      kind: 'sentinel',
      sentinels: [`127.0.0.1:${sentinel.port}`],
      name: 'rkmaster',
      prefix: 'rk:sentinel:',
    });
    onTestFinished(() => handle.close());
    expect(await handle.ready()).toBe(true);
    const d: Decision = { ops: [win('{s}:w', 2)], atomic: true };
    const admitted = [];
    for (let i = 0; i < 3; i++) admitted.push((await handle.limiter.decide(d)).admitted);
    expect(admitted).toEqual([true, true, false]);
    const direct = new Redis(master.url);
    onTestFinished(() => direct.disconnect());
    expect(await direct.hget('rk:sentinel:{s}:w', 's')).toBe('2');
  });
});
