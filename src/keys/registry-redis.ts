import { createHash, randomUUID } from 'node:crypto';
import { Cluster, type Redis } from 'ioredis';
import type { Logger } from 'pino';
import { RkError } from '../errors.js';
import {
  type AuditRecord,
  badToken,
  byIdOrder,
  type Change,
  checkMutation,
  DEFAULT_AUDIT_MAX,
  decodeToken,
  encodeToken,
  type KeyRegistry,
  KeyView,
  listStored,
  type Mutation,
  type Page,
  type PageQuery,
  pageSizeOf,
  type WriteResult,
} from './registry.js';
import type { StoredKey } from './types.js';

/**
 * One write, atomically: compare-and-set the record against what the caller read, keep the hash
 * index unique, bump the version, append the audit entry (capped stream) and publish the change
 * with the record itself, so subscribers apply it without a round trip. Publishing inside the
 * script orders notifications by version. All keys share the `{keys}` hash tag: one cluster slot.
 *
 * KEYS: records, hashes, version, audit. ARGV: id, expected JSON ('' = absent), new JSON
 * ('' = delete), old hash, new hash, audit JSON, audit cap, channel, PUBLISH or SPUBLISH.
 */
const WRITE_LUA = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return {'conflict'} end
if ARGV[5] ~= '' then
  local owner = redis.call('HGET', KEYS[2], ARGV[5])
  if owner and owner ~= ARGV[1] then return {'hash_taken'} end
end
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[5] then redis.call('HDEL', KEYS[2], ARGV[4]) end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[1]) end
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
local rec = ARGV[3]
if rec == '' then rec = 'null' end
redis.call(ARGV[9], ARGV[8], '{"v":' .. v .. ',"id":' .. cjson.encode(ARGV[1]) .. ',"rec":' .. rec .. '}')
return {'ok', v}
`;

/** Version and all records in one atomic read, for a full resync. KEYS: records, version. */
const SNAPSHOT_LUA = `
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
`;

/** Waits for the (fail-fast) command client to connect, at most until `deadline`. */
const untilReady = (client: Redis | Cluster, deadline: number): Promise<void> =>
  client.status === 'ready'
    ? Promise.resolve()
    : new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          client.off('ready', done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
        client.on('ready', done);
      });

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex');
const WRITE_SHA = sha1(WRITE_LUA);
const SNAPSHOT_SHA = sha1(SNAPSHOT_LUA);

/** Concurrent writes to one key retry their compare-and-set at most this often. */
const MAX_ATTEMPTS = 16;

export interface RedisRegistryOptions {
  /** The store's client; the registry opens two connections like it (commands, subscriber). */
  client: Redis | Cluster;
  /** Namespace prefix shared with the store, e.g. `rk:`. */
  prefix?: string;
  now?: () => number;
  /** Safety-net resync period: compares versions and reloads on a difference. */
  resyncMs?: number;
  /** How long a write waits for every live instance to confirm it before returning anyway. */
  notifyTimeoutMs?: number;
  auditMax?: number;
  /** Deadline of the registry's own Redis commands (default 2000). */
  commandTimeoutMs?: number;
  /** How long open() waits for Redis before serving with an empty directory. */
  startTimeoutMs?: number;
  log?: Logger;
}

interface ChangeMessage {
  v: number;
  id: string;
  rec: StoredKey | null;
}

/**
 * Keys managed in Redis and mirrored into every instance's memory. Changes reach other instances
 * by pub/sub (the record travels in the message); a gap in versions, a reconnect, or the periodic
 * version check triggers a full reload, so a lost message costs at most one resync period.
 * Instances heartbeat into a live set and acknowledge each version they apply; a write returns
 * once every live instance has acknowledged it (bounded by notifyTimeoutMs), so the change is in
 * force on every instance's next request.
 */
export class RedisKeyRegistry implements KeyRegistry {
  private readonly view = new KeyView();
  private readonly client: Redis | Cluster;
  private readonly sub: Redis | Cluster;
  private readonly k: {
    rec: string;
    hash: string;
    ver: string;
    audit: string;
    live: string;
    channel: string;
    acks: string;
  };
  /** This instance in the live set and in its acknowledgements. */
  private readonly instanceId = randomUUID();
  /** Highest version each instance has confirmed applying. */
  private readonly acks = new Map<string, number>();
  private readonly staleMs: number;
  /** Cluster: sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7); standalone: plain pub/sub. */
  private readonly sharded: boolean;
  private readonly now: () => number;
  private readonly notifyTimeoutMs: number;
  private readonly auditMax: number;
  private readonly log: Logger | undefined;
  private readonly timer: NodeJS.Timeout;
  private waiters: { done: () => boolean; resolve: () => void }[] = [];
  private resyncing: Promise<boolean> | undefined;
  private resyncAgain = false;
  private closed = false;

  private constructor(opts: RedisRegistryOptions) {
    const p = `${opts.prefix ?? 'rk:'}{keys}:`;
    this.sharded = opts.client instanceof Cluster;
    this.k = {
      rec: `${p}rec`,
      hash: `${p}hash`,
      ver: `${p}ver`,
      audit: `${p}audit`,
      live: `${p}live`,
      channel: `${p}changes`,
      acks: `${p}acks`,
    };
    // Its own command connection: admin writes and full reloads (HGETALL of every key) may take
    // longer than the hot-path store's deadline, and must not queue behind its decisions.
    const commandTimeout = opts.commandTimeoutMs ?? 2000;
    this.client =
      opts.client instanceof Cluster
        ? opts.client.duplicate(undefined, {
            redisOptions: { ...opts.client.options.redisOptions, commandTimeout },
          })
        : opts.client.duplicate({ commandTimeout });
    this.client.on('error', () => {});
    this.now = opts.now ?? Date.now;
    this.notifyTimeoutMs = opts.notifyTimeoutMs ?? 1000;
    this.auditMax = opts.auditMax ?? DEFAULT_AUDIT_MAX;
    this.log = opts.log;
    // A subscribed connection serves nothing else: a second connection of the same kind. Unlike the
    // fail-fast command client it queues its SUBSCRIBE until connected and has no command deadline.
    this.sub =
      opts.client instanceof Cluster
        ? opts.client.duplicate(undefined, {
            enableOfflineQueue: true,
            // Sharded pub/sub: every instance subscribes on the node that owns the {keys} slot,
            // the node that runs the write script, so all get a change in the same delivery.
            shardedSubscribers: true,
            redisOptions: { ...opts.client.options.redisOptions, commandTimeout: undefined },
          })
        : opts.client.duplicate({ enableOfflineQueue: true, commandTimeout: undefined });
    const route = (channel: string, message: string) =>
      channel === this.k.acks ? this.onAck(message) : this.onMessage(message);
    this.sub.on('message', route);
    this.sub.on('smessage', route);
    // Messages sent while the subscriber was away are lost: reload after every (re)connection.
    this.sub.on('ready', () => this.resync());
    this.sub.on('error', (err: Error) =>
      this.log?.warn({ err: err.message }, 'key registry subscriber error'),
    );
    const resyncMs = opts.resyncMs ?? 5000;
    // An instance that stopped heartbeating for three periods no longer holds up writes.
    this.staleMs = 3 * resyncMs;
    this.timer = setInterval(() => void this.check(), resyncMs);
    this.timer.unref();
  }

  /**
   * Subscribes, then loads every record; resolves once the directory is current, or after
   * startTimeoutMs with Redis unreachable (the directory is then empty and fills in as soon as Redis
   * answers: on the subscriber's reconnection or the next periodic check).
   */
  static async open(opts: RedisRegistryOptions): Promise<RedisKeyRegistry> {
    const reg = new RedisKeyRegistry(opts);
    const deadline = Date.now() + (opts.startTimeoutMs ?? 5000);
    const subscribed = (
      reg.sharded
        ? reg.sub.ssubscribe(reg.k.channel, reg.k.acks)
        : reg.sub.subscribe(reg.k.channel, reg.k.acks)
    ).then(
      () => true,
      (err: Error) => {
        reg.log?.warn({ err: err.message }, 'key registry: subscribe failed');
        return false;
      },
    );
    const settle = new Promise<boolean>((resolve) =>
      setTimeout(() => resolve(false), Math.max(0, deadline - Date.now())),
    );
    if (!(await Promise.race([subscribed, settle]))) {
      reg.log?.warn('key registry: Redis not reachable at start; keys apply once it is');
      return reg;
    }
    await untilReady(reg.client, deadline);
    while (!(await reg.resync()) && Date.now() < deadline && !reg.closed) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await reg.heartbeat();
    return reg;
  }

  get version(): number {
    return this.view.version;
  }

  byId(id: string): StoredKey | undefined {
    return this.view.byId(id);
  }

  byHash(hash: string): StoredKey | undefined {
    return this.view.byHash(hash);
  }

  async get(id: string): Promise<StoredKey | undefined> {
    const json = await this.call(() => this.client.hget(this.k.rec, id));
    return json === null ? undefined : (JSON.parse(json) as StoredKey);
  }

  async all(): Promise<StoredKey[]> {
    const rows = await this.call(() => this.client.hvals(this.k.rec));
    return rows.map((r) => JSON.parse(r) as StoredKey).sort(byIdOrder);
  }

  list(query: PageQuery & { account?: string }): Promise<Page<StoredKey>> {
    return listStored(() => this.all(), query);
  }

  async write(id: string, mutate: Mutation, change: Change): Promise<WriteResult> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const curJson = await this.call(() => this.client.hget(this.k.rec, id));
      const before = curJson === null ? undefined : (JSON.parse(curJson) as StoredKey);
      const after = mutate(before);
      checkMutation(id, after);
      const entry: AuditRecord = { ...change, target: id, atMs: this.now(), before, after };
      const res = (await this.call(() =>
        this.script(
          WRITE_SHA,
          WRITE_LUA,
          [this.k.rec, this.k.hash, this.k.ver, this.k.audit],
          [
            id,
            curJson ?? '',
            after === undefined ? '' : JSON.stringify(after),
            before?.hash ?? '',
            after?.hash ?? '',
            JSON.stringify(entry),
            String(this.auditMax),
            this.k.channel,
            this.sharded ? 'SPUBLISH' : 'PUBLISH',
          ],
        ),
      )) as [string, number?];
      if (res[0] === 'conflict') continue;
      if (res[0] === 'hash_taken') throw new RkError('ALREADY_EXISTS', 'key hash already registered');
      const version = Number(res[1]);
      await this.confirmed(version);
      return { before, after, version };
    }
    throw new RkError('UNAVAILABLE', `key ${id} is being changed concurrently; retry`);
  }

  async audit(record: Omit<AuditRecord, 'atMs'>): Promise<void> {
    const entry: AuditRecord = { ...record, atMs: this.now() };
    await this.call(() =>
      this.client.xadd(this.k.audit, 'MAXLEN', '~', this.auditMax, '*', 'e', JSON.stringify(entry)),
    );
  }

  async listAudit(query: PageQuery & { target?: string }): Promise<Page<AuditRecord>> {
    const size = pageSizeOf(query.pageSize);
    const cursor = decodeToken(query.pageToken);
    if (cursor !== undefined && !/^\d+-\d+$/.test(cursor)) throw badToken();
    const items: AuditRecord[] = [];
    let end = cursor === undefined ? '+' : `(${cursor}`;
    let lastId = '';
    const batch = Math.max(size + 1, 100);
    for (;;) {
      const rows = await this.call(() => this.client.xrevrange(this.k.audit, end, '-', 'COUNT', batch));
      for (const [streamId, fields] of rows) {
        const e = JSON.parse(fields[1] ?? '{}') as AuditRecord;
        if (query.target && e.target !== query.target) continue;
        if (items.length === size) return { items, nextPageToken: encodeToken(lastId) };
        items.push(e);
        lastId = streamId;
      }
      if (rows.length < batch) return { items, nextPageToken: '' };
      end = `(${rows[rows.length - 1]![0]}`;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
    await this.client.hdel(this.k.live, this.instanceId).catch(() => {});
    this.sub.disconnect();
    this.client.disconnect();
  }

  private onMessage(message: string): void {
    let msg: ChangeMessage;
    try {
      msg = JSON.parse(message) as ChangeMessage;
    } catch {
      this.log?.warn('key registry: unreadable change message; resyncing');
      void this.resync();
      return;
    }
    if (msg.v <= this.view.version) return;
    if (msg.v !== this.view.version + 1 || this.resyncing) {
      void this.resync();
      return;
    }
    this.view.apply(msg.id, msg.rec ?? undefined, msg.v);
    this.changed();
  }

  /** `<instance> <version>`: that instance has applied everything up to version. */
  private onAck(message: string): void {
    const [id, v] = message.split(' ');
    const version = Number(v);
    if (!id || !Number.isFinite(version)) return;
    if (version > (this.acks.get(id) ?? -1)) this.acks.set(id, version);
    this.wake();
  }

  /** The directory moved to a new version: confirm it to the writers, wake local waiters. */
  private changed(): void {
    const v = this.view.version;
    this.acks.set(this.instanceId, v);
    const message = `${this.instanceId} ${v}`;
    const sent = this.sharded
      ? this.client.spublish(this.k.acks, message)
      : this.client.publish(this.k.acks, message);
    sent.catch(() => {});
    this.wake();
  }

  /**
   * Full reload; concurrent requests share one run, and a request during a run queues one more.
   * Resolves false when Redis could not be read (the next check or reconnection retries).
   */
  private resync(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (this.resyncing) {
      this.resyncAgain = true;
      return this.resyncing;
    }
    this.resyncing = (async () => {
      try {
        do {
          this.resyncAgain = false;
          const [ver, flat] = (await this.script(
            SNAPSHOT_SHA,
            SNAPSHOT_LUA,
            [this.k.rec, this.k.ver],
            [],
          )) as [string, string[]];
          const records: StoredKey[] = [];
          for (let i = 1; i < flat.length; i += 2) records.push(JSON.parse(flat[i]!) as StoredKey);
          // The snapshot is authoritative, even below the view's version (Redis was flushed).
          this.view.replace(records, Number(ver));
          this.changed();
        } while (this.resyncAgain && !this.closed);
        return true;
      } catch (err) {
        this.log?.warn({ err: (err as Error).message }, 'key registry resync failed');
        return false;
      } finally {
        this.resyncing = undefined;
      }
    })();
    return this.resyncing;
  }

  private async check(): Promise<void> {
    try {
      const ver = Number((await this.client.get(this.k.ver)) ?? '0');
      if (ver !== this.view.version) await this.resync();
      await this.heartbeat();
    } catch (err) {
      this.log?.warn({ err: (err as Error).message }, 'key registry version check failed');
    }
  }

  /** Marks this instance live, and forgets instances that stopped heartbeating. */
  private async heartbeat(): Promise<void> {
    try {
      await this.client.hset(this.k.live, this.instanceId, String(Date.now()));
      const live = await this.liveInstances();
      for (const id of this.acks.keys()) if (!live.includes(id)) this.acks.delete(id);
    } catch (err) {
      this.log?.warn({ err: (err as Error).message }, 'key registry heartbeat failed');
    }
  }

  private async liveInstances(): Promise<string[]> {
    const all = await this.client.hgetall(this.k.live);
    const cutoff = Date.now() - this.staleMs;
    const stale = Object.keys(all).filter((id) => Number(all[id]) < cutoff);
    if (stale.length > 0) await this.client.hdel(this.k.live, ...stale);
    return Object.keys(all).filter((id) => Number(all[id]) >= cutoff);
  }

  /**
   * Waits until every live instance (this one included) has confirmed applying `version`, so a
   * change is in force everywhere when the admin call returns; at most notifyTimeoutMs, after which
   * the write stands and the late instances catch up by themselves (an instance that is down
   * resyncs when it returns; this one resyncs at once if it was the late one).
   */
  private async confirmed(version: number): Promise<void> {
    let live: string[];
    try {
      live = await this.liveInstances();
    } catch {
      live = [];
    }
    if (!live.includes(this.instanceId)) live.push(this.instanceId);
    const late = () => live.filter((id) => (this.acks.get(id) ?? -1) < version);
    const done = () => late().length === 0;
    if (done()) return;
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, this.notifyTimeoutMs);
      const waiter = {
        done,
        resolve: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      this.waiters.push(waiter);
    });
    if (ok || this.closed) return;
    const missing = late();
    this.log?.warn(
      { version, late: missing.length, live: live.length },
      'key registry: change not confirmed by every instance in time',
    );
    if (missing.includes(this.instanceId)) await this.resync();
  }

  private wake(): void {
    const due = this.waiters.filter((w) => w.done());
    if (due.length === 0) return;
    this.waiters = this.waiters.filter((w) => !due.includes(w));
    for (const w of due) w.resolve();
  }

  private async script(sha: string, src: string, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await this.client.evalsha(sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!String((err as Error).message).includes('NOSCRIPT')) throw err;
      return await this.client.eval(src, keys.length, ...keys, ...args);
    }
  }

  /** Backend failures become UNAVAILABLE; domain errors pass through. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof RkError) throw err;
      this.log?.warn({ err: (err as Error).message }, 'key registry: redis call failed');
      throw new RkError('UNAVAILABLE', 'key store unavailable');
    }
  }
}
