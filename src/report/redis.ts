import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { RkError } from '../errors.js';
import type { SignalKind } from '../policy/signals.js';
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

/** Report state in Redis, shared by every instance using the same Redis and namespace. */
export class RedisReportStore implements ReportStore {
  private readonly base: string;
  private readonly channel: string;
  private readonly listeners = new Set<(alert: Alert) => void>();
  private sub: Redis | Cluster | undefined;
  private subReady: Promise<void> | undefined;

  /**
   * @param redis the limiter store's client (commands only; a duplicate connection is opened for
   *   pub/sub when the first subscriber comes).
   * @param namespace the limiter store's key prefix, e.g. "rk:".
   * @param onError where pub/sub and parse failures go (they never reach a caller).
   */
  constructor(
    private readonly redis: Redis | Cluster,
    namespace = 'rk:',
    private readonly onError: (err: unknown) => void = () => {},
  ) {
    this.base = `${namespace}{report}:`;
    this.channel = `${namespace}report:alerts`;
  }

  private pair = (key: string, signal: string): string => `${key}|${signal}`;

  async raiseFlag(i: FlagInput): Promise<RaiseResult> {
    const pair = this.pair(i.key, i.signal);
    const [outcome, pairs] = (await this.redis.eval(
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
    const h = await this.redis.hgetall(`${this.base}flag:${id}`);
    return h['id'] ? fromHash(h) : undefined;
  }

  async listFlags(filter: FlagFilter, pageSize: number, pageToken: string): Promise<FlagPage> {
    let max = pageToken ? `(${seqOfToken(pageToken)}` : '+inf';
    const flags: FlagRecord[] = [];
    const batch = Math.max(pageSize + 1, 100);
    for (;;) {
      const ids = await this.redis.zrevrangebyscore(`${this.base}flags`, max, '-inf', 'LIMIT', 0, batch);
      if (ids.length === 0) return { flags, nextPageToken: '' };
      const p = this.redis.pipeline();
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
    const pairs = (await this.redis.eval(
      REVIEW,
      1,
      `${this.base}flag:${id}`,
      this.base,
      state,
      note,
      reviewer,
      String(atMs),
    )) as string[] | null;
    if (!pairs) throw new RkError('NOT_FOUND', `flag ${id} not found`, 'flag_id');
    return toFlag(pairs);
  }

  async claimOnce(id: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(`${this.base}once:${id}`, '1', 'PX', Math.max(1, ttlMs), 'NX')) === 'OK';
  }

  async publish(alert: Alert): Promise<void> {
    await this.redis.publish(this.channel, JSON.stringify(alert));
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
    const sub: Redis | Cluster = (this.redis as Redis).duplicate();
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

  async addTotals(bucketStartMs: number, totals: readonly Totals[]): Promise<void> {
    if (totals.length === 0) return;
    const p = this.redis.pipeline();
    const ttl = TOP_RETENTION_MS + 2 * TOP_BUCKET_MS;
    for (const by of ['requests', 'tokens', 'spend'] as const) {
      const zkey = `${this.base}top:${by}:${bucketStartMs}`;
      let any = false;
      for (const t of totals) {
        const v = totalOf(t, by);
        if (v <= 0) continue;
        p.zincrby(zkey, v, JSON.stringify([t.key, t.account]));
        any = true;
      }
      if (any) p.pexpire(zkey, ttl);
    }
    const rows = (await p.exec()) ?? [];
    for (const [err] of rows) if (err) throw err;
  }

  async topKeys(by: TopBy, fromMs: number, toMs: number, limit: number): Promise<TopEntry[]> {
    const keys: string[] = [];
    const first = Math.floor(Math.max(fromMs, toMs - TOP_RETENTION_MS) / TOP_BUCKET_MS) * TOP_BUCKET_MS;
    for (let start = first; start <= toMs; start += TOP_BUCKET_MS)
      keys.push(`${this.base}top:${by}:${start}`);
    if (keys.length === 0) return [];
    const tmp = `${this.base}tmp:${randomUUID()}`;
    const rows =
      (await this.redis
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
  }
}
