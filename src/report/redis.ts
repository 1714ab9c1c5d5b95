import { randomUUID } from 'node:crypto';
import { Cluster, type Redis } from 'ioredis';
import { Counter } from 'prom-client';
import { RkError } from '../errors.js';
import { registry } from '../metrics.js';
import type { SignalKind } from '../policy/signals.js';
import { readyWithin } from '../store/factory.js';
import {
  type Alert,
  FLAG_STATES,
  type FlagFilter,
  type FlagInput,
  type FlagPage,
  type FlagRecord,
  type FlagState,
  matches,
  type RaiseResult,
  type ReportStore,
  seqOfToken,
  TOP_BUCKET_MS,
  TOP_RETENTION_MS,
  type TopBy,
  type TopEntry,
  type Totals,
  topOrder,
  totalOf,
} from './types.js';

export const totalsDropped = new Counter({
  name: 'ratekeeper_report_totals_dropped_total',
  help: 'TopKeys increments (one key, metric and minute) not known to be written: a chunk of a totals flush failed, and the rest of that flush was dropped (not retried).',
  registers: [registry],
});

/** Deadline of the report connection's commands: batch writes, not decisions (default). */
export const REPORT_COMMAND_TIMEOUT_MS = 5_000;
/** Commands per pipeline of a totals flush (default): no single write holds the connection long. */
export const TOTALS_CHUNK = 500;

export interface RedisReportOptions {
  /** Deadline of the report connection's commands (default REPORT_COMMAND_TIMEOUT_MS). */
  commandTimeoutMs?: number;
  /** At most this many commands per pipeline of a totals flush (default TOTALS_CHUNK). */
  chunk?: number;
}

/*
 * Layout, all under one hash tag so every script runs on one Cluster node (report traffic is small:
 * flags are raised at most once a bucket per key and signal, totals flushed every few seconds):
 *   <ns>{report}:flag:<id>          hash, one flag
 *   <ns>{report}:flags              zset id by sequence (newest last), for listing
 *   <ns>{report}:seq                flag id sequence
 *   <ns>{report}:open:<key>|<sig>   id of the open flag of key and signal
 *   <ns>{report}:closed:<key>|<sig> when the last flag of key and signal was reviewed
 *   <ns>{report}:once:<id>          crossings already sent
 *   <ns>{report}:top:<by>:<bucket>  zset of totals per key ([key, account] JSON) for one minute
 * Alerts fan out on the pub/sub channel <ns>report:alerts.
 */

const RAISE = `
local base = ARGV[1]
local id = redis.call('GET', KEYS[1])
if id and redis.call('EXISTS', base .. 'flag:' .. id) == 1 then
  local fk = base .. 'flag:' .. id
  local at = tonumber(ARGV[10])
  local last = tonumber(redis.call('HGET', fk, 'lastSeenMs')) or 0
  if last > at then at = last end
  redis.call('HSET', fk, 'observed', ARGV[5], 'threshold', ARGV[6], 'windowMs', ARGV[7], 'detail', ARGV[8],
    'lastSeenMs', tostring(at))
  return {'updated', redis.call('HGETALL', fk)}
end
local closed = redis.call('GET', KEYS[2])
if closed and tonumber(closed) >= tonumber(ARGV[9]) then return {'suppressed', {}} end
local seq = redis.call('INCR', KEYS[3])
id = 'f' .. string.format('%010d', seq)
local fk = base .. 'flag:' .. id
redis.call('HSET', fk, 'id', id, 'key', ARGV[2], 'account', ARGV[3], 'signal', ARGV[4], 'observed', ARGV[5],
  'threshold', ARGV[6], 'windowMs', ARGV[7], 'detail', ARGV[8], 'firstSeenMs', ARGV[10], 'lastSeenMs', ARGV[10],
  'state', 'open', 'note', '', 'reviewedBy', '', 'reviewedAtMs', '0')
redis.call('SET', KEYS[1], id)
redis.call('ZADD', KEYS[4], seq, id)
return {'created', redis.call('HGETALL', fk)}
`;

const REVIEW = `
local base = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local f = redis.call('HMGET', KEYS[1], 'id', 'key', 'signal')
local pair = f[2] .. '|' .. f[3]
if redis.call('GET', base .. 'open:' .. pair) == f[1] then
  redis.call('DEL', base .. 'open:' .. pair)
  redis.call('SET', base .. 'closed:' .. pair, ARGV[5])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'note', ARGV[3], 'reviewedBy', ARGV[4], 'reviewedAtMs', ARGV[5])
return redis.call('HGETALL', KEYS[1])
`;

const toFlag = (pairs: string[]): FlagRecord => {
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < pairs.length; i += 2) h[pairs[i]!] = pairs[i + 1]!;
  return fromHash(h);
};

const fromHash = (h: Record<string, string>): FlagRecord => ({
  id: h['id'] ?? '',
  key: h['key'] ?? '',
  account: h['account'] ?? '',
  signal: h['signal'] as SignalKind,
  observed: Number(h['observed']),
  threshold: Number(h['threshold']),
  windowMs: Number(h['windowMs']),
  firstSeenMs: Number(h['firstSeenMs']),
  lastSeenMs: Number(h['lastSeenMs']),
  state: (FLAG_STATES as readonly string[]).includes(h['state'] ?? '') ? (h['state'] as FlagState) : 'open',
  note: h['note'] ?? '',
  reviewedBy: h['reviewedBy'] ?? '',
  reviewedAtMs: Number(h['reviewedAtMs'] ?? 0),
  detail: h['detail'] ?? '',
});

/**
 * Report state in Redis, shared by every instance using the same Redis and namespace. It runs on
 * its own connections, never on the limiter's: a totals flush is thousands of commands, and
 * decisions queued behind them would miss their deadline and be admitted fail-open.
 */
export class RedisReportStore implements ReportStore {
  private readonly redis: Redis | Cluster;
  private readonly commandTimeoutMs: number;
  private readonly chunk: number;
  private readonly base: string;
  private readonly channel: string;
  private readonly listeners = new Set<(alert: Alert) => void>();
  private sub: Redis | Cluster | undefined;
  private subReady: Promise<void> | undefined;

  /**
   * @param client the limiter store's client, only duplicated: one connection like it for commands
   *   (with a longer deadline), another for pub/sub when the first subscriber comes. close() closes both.
   * @param namespace the limiter store's key prefix, e.g. "rk:".
   * @param onError where pub/sub and parse failures go (they never reach a caller).
   */
  constructor(
    private readonly client: Redis | Cluster,
    namespace = 'rk:',
    private readonly onError: (err: unknown) => void = () => {},
    options: RedisReportOptions = {},
  ) {
    this.commandTimeoutMs = options.commandTimeoutMs ?? REPORT_COMMAND_TIMEOUT_MS;
    this.chunk = Math.max(4, options.chunk ?? TOTALS_CHUNK);
    const commandTimeout = this.commandTimeoutMs;
    // duplicate() of a Cluster is a new Cluster; of a Sentinel client, a client of the same master.
    this.redis =
      client instanceof Cluster
        ? client.duplicate(undefined, { redisOptions: { ...client.options.redisOptions, commandTimeout } })
        : client.duplicate({ commandTimeout });
    // Errors surface per command; without a listener they would be re-thrown.
    this.redis.on('error', () => {});
    this.base = `${namespace}{report}:`;
    this.channel = `${namespace}report:alerts`;
  }

  /**
   * The command connection, once connected (at most one deadline's wait): like the limiter's client
   * it has no offline queue, and a fresh duplicate is still connecting when the first writes come.
   */
  private async conn(): Promise<Redis | Cluster> {
    if (this.redis.status !== 'ready') await readyWithin(this.redis, this.commandTimeoutMs);
    return this.redis;
  }

  private pair = (key: string, signal: string): string => `${key}|${signal}`;

  async raiseFlag(i: FlagInput): Promise<RaiseResult> {
    const pair = this.pair(i.key, i.signal);
    const redis = await this.conn();
    const [outcome, pairs] = (await redis.eval(
      RAISE,
      4,
      `${this.base}open:${pair}`,
      `${this.base}closed:${pair}`,
      `${this.base}seq`,
      `${this.base}flags`,
      this.base,
      i.key,
      i.account,
      i.signal,
      String(i.observed),
      String(i.threshold),
      String(i.windowMs),
      i.detail,
      String(i.sinceMs),
      String(i.atMs),
    )) as [RaiseResult['outcome'], string[]];
    return outcome === 'suppressed' ? { outcome } : { outcome, flag: toFlag(pairs) };
  }

  async getFlag(id: string): Promise<FlagRecord | undefined> {
    const h = await (await this.conn()).hgetall(`${this.base}flag:${id}`);
    return h['id'] ? fromHash(h) : undefined;
  }

  async listFlags(filter: FlagFilter, pageSize: number, pageToken: string): Promise<FlagPage> {
    let max = pageToken ? `(${seqOfToken(pageToken)}` : '+inf';
    const flags: FlagRecord[] = [];
    const batch = Math.max(pageSize + 1, 100);
    const redis = await this.conn();
    for (;;) {
      const ids = await redis.zrevrangebyscore(`${this.base}flags`, max, '-inf', 'LIMIT', 0, batch);
      if (ids.length === 0) return { flags, nextPageToken: '' };
      const p = redis.pipeline();
      for (const id of ids) p.hgetall(`${this.base}flag:${id}`);
      const rows = (await p.exec()) ?? [];
      for (const [err, h] of rows) {
        if (err) throw err;
        const rec = h as Record<string, string>;
        if (!rec['id']) continue;
        const f = fromHash(rec);
        if (!matches(f, filter)) continue;
        if (flags.length === pageSize) return { flags, nextPageToken: flags[flags.length - 1]!.id };
        flags.push(f);
      }
      if (ids.length < batch) return { flags, nextPageToken: '' };
      max = `(${seqOfToken(ids[ids.length - 1]!)}`;
    }
  }

  async reviewFlag(
    id: string,
    state: Exclude<FlagState, 'open'>,
    note: string,
    reviewer: string,
    atMs: number,
  ): Promise<FlagRecord> {
    const pairs = (await (
      await this.conn()
    ).eval(REVIEW, 1, `${this.base}flag:${id}`, this.base, state, note, reviewer, String(atMs))) as
      | string[]
      | null;
    if (!pairs) throw new RkError('NOT_FOUND', `flag ${id} not found`, 'flag_id');
    return toFlag(pairs);
  }

  async claimOnce(id: string, ttlMs: number): Promise<boolean> {
    return (
      (await (await this.conn()).set(`${this.base}once:${id}`, '1', 'PX', Math.max(1, ttlMs), 'NX')) === 'OK'
    );
  }

  async publish(alert: Alert): Promise<void> {
    await (await this.conn()).publish(this.channel, JSON.stringify(alert));
  }

  subscribe(listener: (alert: Alert) => void): () => void {
    this.listeners.add(listener);
    void this.connectSub();
    return () => this.listeners.delete(listener);
  }

  /** Listeners of this instance (WatchAlerts streams). */
  get subscribers(): number {
    return this.listeners.size;
  }

  private connectSub(): Promise<void> {
    if (this.subReady) return this.subReady;
    const sub: Redis | Cluster = (this.client as Redis).duplicate();
    this.sub = sub;
    sub.on('error', this.onError);
    sub.on('message', (_channel: string, message: string) => {
      let alert: Alert;
      try {
        alert = JSON.parse(message) as Alert;
      } catch (err) {
        this.onError(err);
        return;
      }
      for (const l of this.listeners) l(alert);
    });
    // The shared client runs without an offline queue: subscribe once connected, and again a
    // second later while it fails (ioredis re-subscribes by itself after a reconnect).
    this.subReady = new Promise<void>((resolve) => {
      const go = (): void => {
        if (this.sub !== sub) return;
        sub.subscribe(this.channel).then(
          () => resolve(),
          (err: unknown) => {
            this.onError(err);
            setTimeout(go, 1_000).unref();
          },
        );
      };
      if (sub.status === 'ready') go();
      else sub.once('ready', go);
    });
    return this.subReady;
  }

  /** Opens the alert subscription if needed; resolves once it is live. */
  subscribed(): Promise<void> {
    return this.connectSub();
  }

  /**
   * Writes in pipelines of at most `chunk` commands, each awaited before the next, so even the
   * report connection never holds one giant pipeline. The first failure ends the flush: its
   * unwritten increments and the rest are counted in ratekeeper_report_totals_dropped_total and
   * the error thrown (the engine logs it); nothing is retried.
   */
  async addTotals(bucketStartMs: number, totals: readonly Totals[]): Promise<void> {
    // One increment per key, metric and bucket: the engine already sums per key, this keeps any
    // caller's repeats to one command each.
    const incs: [zkey: string, member: string, value: number][] = [];
    for (const by of ['requests', 'tokens', 'spend'] as const) {
      const zkey = `${this.base}top:${by}:${bucketStartMs}`;
      const sums = new Map<string, number>();
      for (const t of totals) {
        const v = totalOf(t, by);
        if (v <= 0) continue;
        const member = JSON.stringify([t.key, t.account]);
        sums.set(member, (sums.get(member) ?? 0) + v);
      }
      for (const [member, v] of sums) incs.push([zkey, member, v]);
    }
    const ttl = TOP_RETENTION_MS + 2 * TOP_BUCKET_MS;
    // Room in each chunk for a PEXPIRE of each of the three metrics' sets.
    const per = this.chunk - 3;
    for (let i = 0; i < incs.length; i += per) {
      const part = incs.slice(i, i + per);
      const p = (await this.conn()).pipeline();
      const zkeys = new Set<string>();
      for (const [zkey, member, v] of part) {
        p.zincrby(zkey, v, member);
        zkeys.add(zkey);
      }
      // Each chunk sets the expiry of the sets it wrote: no set is left without one by a later failure.
      for (const zkey of zkeys) p.pexpire(zkey, ttl);
      let failure: unknown;
      let unwritten = incs.length - i - part.length;
      try {
        const rows = (await p.exec()) ?? [];
        rows.forEach(([err], j) => {
          if (!err) return;
          failure ??= err;
          if (j < part.length) unwritten++;
        });
      } catch (err) {
        failure = err;
        unwritten += part.length;
      }
      if (failure !== undefined) {
        totalsDropped.inc(unwritten);
        const why = failure instanceof Error ? failure.message : String(failure);
        throw new Error(`report totals: ${unwritten} of ${incs.length} increments dropped: ${why}`);
      }
    }
  }

  async topKeys(by: TopBy, fromMs: number, toMs: number, limit: number): Promise<TopEntry[]> {
    const keys: string[] = [];
    const first = Math.floor(Math.max(fromMs, toMs - TOP_RETENTION_MS) / TOP_BUCKET_MS) * TOP_BUCKET_MS;
    for (let start = first; start <= toMs; start += TOP_BUCKET_MS)
      keys.push(`${this.base}top:${by}:${start}`);
    if (keys.length === 0) return [];
    const tmp = `${this.base}tmp:${randomUUID()}`;
    const rows =
      (await (
        await this.conn()
      )
        .multi()
        .zunionstore(tmp, keys.length, ...keys)
        .zrevrange(tmp, 0, limit * 2 - 1, 'WITHSCORES')
        .del(tmp)
        .exec()) ?? [];
    const [err, flat] = rows[1] ?? [null, []];
    if (err) throw err;
    const pairs = flat as string[];
    // A key that moved account within the window has two members: merge them under its latest.
    const byKey = new Map<string, TopEntry>();
    for (let i = 0; i + 1 < pairs.length; i += 2) {
      const [key, account] = JSON.parse(pairs[i]!) as [string, string];
      const value = Number(pairs[i + 1]);
      const e = byKey.get(key);
      if (e) e.value += value;
      else byKey.set(key, { key, account, value });
    }
    return [...byKey.values()].sort(topOrder).slice(0, limit);
  }

  async close(): Promise<void> {
    this.listeners.clear();
    const sub = this.sub;
    this.sub = undefined;
    this.subReady = undefined;
    if (sub) sub.disconnect();
    this.redis.disconnect();
  }
}
