/**
 * The Redis store: every decision, settle and release runs in one EVALSHA of a Lua script (lib.lua
 * prepended), so a decision costs one round trip however many ops it has, and the script reads Redis
 * TIME so instances with skewed clocks agree. Decisions issued in the same event-loop turn share that
 * call (each stays atomic on its own). Works on one Redis, Sentinel and Cluster: keys of one decision
 * share a hash tag; a non-atomic decision spanning slots runs one script per slot, concurrently.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import clusterKeySlot from 'cluster-key-slot';
import { Cluster, Command, type Redis } from 'ioredis';
import {
  type Decision,
  type DecisionResult,
  type LimiterStore,
  type Op,
  type OpState,
  type Settle,
  type SettleResult,
  StoreUnavailableError,
} from './store.js';

interface Script {
  lua: string;
  sha: string;
}

const lib = readFileSync(new URL('./lib.lua', import.meta.url), 'utf8');
const load = (name: string): Script => {
  const lua = `${lib}\n${readFileSync(new URL(`./${name}.lua`, import.meta.url), 'utf8')}`;
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
};
const SCRIPTS = { decide: load('decide'), settle: load('settle'), release: load('release') };

/** A slot set's companion ZSET of admission times (lib.lua's HELD). */
const HELD_SUFFIX = ':held';

/**
 * A script call whose commandTimeout gives its verdict only after the event loop's poll phase. The
 * timer starts where ioredis starts it (when the command goes to its node's connection), but ioredis
 * rejects in the timers phase, before the socket is read: a reply that came in while the loop was
 * busy (a long turn, a GC pause) was thrown away as late, and the decision Redis had applied was
 * failed open. Binary calls leave bulk replies (decide's packed replies) as bytes.
 */
export class ScriptCommand extends Command {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    name: 'evalsha' | 'eval',
    body: string,
    keys: string[],
    args: (string | number | Buffer)[],
    binary: boolean,
  ) {
    // ioredis flattens the arrays: no spread copies of keys and args.
    super(name, [body, keys.length, keys, args], { replyEncoding: binary ? null : 'utf8' });
    const { resolve, reject } = this;
    this.resolve = (reply) => {
      clearTimeout(this.timer);
      resolve(reply);
    };
    this.reject = (err) => {
      clearTimeout(this.timer);
      reject(err);
    };
  }

  override setTimeout(ms: number): void {
    this.timer ??= setTimeout(() => setImmediate(this.expire), ms);
  }

  private readonly expire = (): void => {
    if (!this.isSettled) this.reject(new Error('Command timed out'));
  };

  /**
   * ioredis writes a command with a binary argument (decide's numbers) as a list of pieces it copies
   * one by one, ~3× its cost for strings: here every argument is written in place into one buffer.
   * (Building the text around the binary argument as one string first, in a store-only driver of (c)
   * decisions: 22.8–23.7 vs 21.0–21.4 µs of CPU and 9.5 vs 6.9 KB allocated per decision.)
   */
  override toWritable(socket: object): string | Buffer {
    const args = this.args as (string | Buffer)[];
    if (!args.some(Buffer.isBuffer)) return super.toWritable(socket);
    const lens = new Array<number>(args.length);
    let size = headSize(args.length + 1) + headSize(this.name.length) + this.name.length + 2;
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      const n = typeof a === 'string' ? Buffer.byteLength(a) : a.length;
      lens[i] = n;
      size += headSize(n) + n + 2;
    }
    const out = Buffer.allocUnsafe(size);
    let at = writeHead(out, 0, ARRAY, args.length + 1);
    at = writeHead(out, at, BULK, this.name.length);
    at = crlf(out, at + out.write(this.name, at, 'latin1'));
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      at = writeHead(out, at, BULK, lens[i]!);
      at = crlf(out, at + (typeof a === 'string' ? out.write(a, at) : a.copy(out, at)));
    }
    return out;
  }
}

/** RESP's `*` (array of n) and `$` (bulk string of n bytes). */
const ARRAY = 0x2a;
const BULK = 0x24;

/** Bytes of `<mark><n>\r\n`. */
const headSize = (n: number): number => 3 + String(n).length;

const crlf = (out: Buffer, at: number): number => {
  out[at] = 13;
  out[at + 1] = 10;
  return at + 2;
};

/** Writes `<mark><n>\r\n` at `at`; returns the offset after it. */
const writeHead = (out: Buffer, at: number, mark: number, n: number): number => {
  out[at] = mark;
  return crlf(out, at + 1 + out.write(String(n), at + 1, 'latin1'));
};

/**
 * Decisions issued in one event-loop turn (to one cluster slot) go out as one script call: under load
 * that turns dozens of commands into one, which is most of the client's cost per decision. A call
 * leaves as soon as it is full, so Redis runs it while the turn decodes the rest; full is MAX_BATCH
 * decisions or MAX_BATCH_KEYS keys (the keys stand for the Redis work a call carries). At peak, in
 * alternated pairs: scenario c (9 keys a decision) in calls of 16 instead of 32, median +7% decisions/s,
 * faster in 11 of 14 pairs (24 about as 16; 8 and 12 slower); scenario b (1 key) slower in calls of 16.
 */
export const MAX_BATCH = 32;
export const MAX_BATCH_KEYS = 144;
/**
 * While no script call is in flight, Redis is idle: a call leaves once its decisions carry a quarter
 * of MAX_BATCH_KEYS, so Redis starts on it while the turn decodes the rest. Scenario c at half load (8
 * in flight), alternated with calls that wait for the turn: p99 2.80–3.06 vs 3.31–4.27 ms, p50
 * 1.27–1.39 vs 1.45–1.47 ms; at peak decisions/s unchanged (3 pairs). Decisions of a key or two (scenario
 * b: ~12 µs of Redis each) keep their calls of MAX_BATCH: split by count, b's peak calls halved in size
 * and its decisions/s fell.
 */
export const IDLE_BATCH_KEYS = MAX_BATCH_KEYS / 4;

/** Decisions waiting for one script call, and their keys. */
interface Batch {
  items: Queued[];
  keys: number;
}

/** A batch's decisions, leaving it empty for the next. */
const take = (batch: Batch): Queued[] => {
  const items = batch.items;
  batch.items = [];
  batch.keys = 0;
  return items;
};

/** One decision waiting for its batch, in decide.lua's per-decision layout. */
interface Queued {
  keys: string[];
  requestId: string;
  packed: Buffer;
  resolve(reply: number[]): void;
  reject(err: unknown): void;
}

/** decide.lua's op kinds (its KIND table). */
const OP_KIND = { window: 1, slot: 2, budget: 3 } as const;

/** Lua has no Infinity on the wire; an unlimited value is the largest exact integer. */
const num = (x: number): number => (Number.isFinite(x) ? x : Number.MAX_SAFE_INTEGER);

/** One op's five numbers at `at` in decide.lua's layout; returns the offset after them. */
const writeOp = (
  b: Buffer,
  at: number,
  kind: number,
  limit: number,
  p1: number,
  p2: number,
  p3: number,
): number => {
  b.writeDoubleLE(kind, at);
  b.writeDoubleLE(num(limit), at + 8);
  b.writeDoubleLE(p1, at + 16);
  b.writeDoubleLE(p2, at + 24);
  b.writeDoubleLE(p3, at + 32);
  return at + 40;
};

/** Reply errors that mean "the backend is not serving right now", not a bug. */
const TRANSIENT = /^(CLUSTERDOWN|LOADING|TRYAGAIN|MASTERDOWN|READONLY|NOREPLICAS|BUSY|MOVED|ASK)\b/;

export interface RedisStoreOptions {
  /** Key namespace prepended to every logical key. */
  prefix?: string;
  /** Tests only: a clock sent to the scripts instead of Redis TIME. */
  testClock?: () => number;
  /** How often the offset to Redis TIME behind now() is re-measured. */
  clockRefreshMs?: number;
  /** The local clock that offset corrects (default Date.now; tests skew it). */
  localClock?: () => number;
}

export class RedisStore implements LimiterStore {
  readonly prefix: string;
  private readonly testClock: (() => number) | undefined;
  private readonly localClock: () => number;
  private readonly isCluster: boolean;
  private readonly timer: NodeJS.Timeout;
  private readonly onReady: () => void;
  private offsetMs = 0;
  private failing = false;
  private probe: NodeJS.Timeout | undefined;
  private loading: Promise<unknown> = Promise.resolve();
  /**
   * Each cluster slot's batch (slot 0 off a cluster), kept once made and emptied when sent: a Map
   * emptied by delete shrinks into a new table, one per flush, each linked from the one before; with
   * Map.clear() that chain once kept every batch alive until a full GC (~750 bytes a decision).
   */
  private readonly batches = new Map<number, Batch>();
  /** Batches given a decision since the last flush. */
  private readonly due: Batch[] = [];
  private flushing = false;
  /** Decide calls sent and not yet answered. */
  private inFlight = 0;

  constructor(
    readonly client: Redis | Cluster,
    options: RedisStoreOptions = {},
  ) {
    this.prefix = options.prefix ?? 'rk:';
    this.testClock = options.testClock;
    this.localClock = options.localClock ?? Date.now;
    this.isCluster = client instanceof Cluster;
    this.onReady = (): void => {
      this.failing = false;
      this.loading = this.loadScripts();
      void this.syncClock();
    };
    client.on('ready', this.onReady);
    if (client.status === 'ready') this.onReady();
    this.timer = setInterval(() => void this.syncClock(), options.clockRefreshMs ?? 30_000);
    this.timer.unref();
  }

  now(): number {
    return this.testClock ? this.testClock() : this.localClock() + this.offsetMs;
  }

  healthy(): boolean {
    return this.client.status === 'ready' && !this.failing;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.probe);
    this.client.off('ready', this.onReady);
  }

  async decide(d: Decision): Promise<DecisionResult> {
    const { ops } = d;
    // Nothing to check or record (e.g. no descriptor matched a rule): no round trip.
    if (ops.length === 0 && (!d.reservation || d.dryRun)) {
      return { admitted: true, denied: -1, states: [], nowMs: this.now(), expiredLeases: 0 };
    }
    if (this.isCluster && !d.reservation) {
      const groups = this.groupBySlot(ops);
      if (groups.size > 1) {
        if (d.atomic)
          throw new Error(`atomic decision spans ${groups.size} cluster slots: keys need one hash tag`);
        return this.decideSplit(d, [...groups.values()]);
      }
    }
    const all = ops.map((_, i) => i);
    return this.parseDecision(await this.runDecide(d, all), d.ops, all);
  }

  async settle(s: Settle): Promise<SettleResult> {
    const p = this.prefix;
    const keys = [p + s.onceKey, p + s.reservationKey];
    const args: (string | number)[] = [
      this.clockArg(),
      Math.max(1, Math.ceil(s.onceTtlMs)),
      s.release ? 1 : 0,
      s.windows.length,
      s.counters.length,
    ];
    for (const w of s.windows) {
      keys.push(p + w.key);
      args.push(w.windowMs, num(w.limit), w.amount);
    }
    for (const c of s.counters) {
      keys.push(p + c.key);
      args.push(c.amount, Math.max(1, Math.ceil(c.ttlMs)), num(c.limit), c.periodEndMs);
    }
    this.assertOneSlot(keys, 'settle');
    const r = await this.run<number[]>(SCRIPTS.settle, keys, args);
    const states = (from: number, n: number): OpState[] =>
      Array.from({ length: n }, (_, i) => state(r, from + i * 5));
    return {
      duplicate: r[0] === 1,
      reserved: r[1] === 1,
      nowMs: r[2]!,
      windows: states(3, s.windows.length),
      counters: states(3 + s.windows.length * 5, s.counters.length),
    };
  }

  async release(reservationKey: string): Promise<boolean> {
    const r = await this.run<number>(SCRIPTS.release, [this.prefix + reservationKey], [this.clockArg()]);
    return r === 1;
  }

  private runDecide(d: Decision, idx: number[]): Promise<number[]> {
    const p = this.prefix;
    const res = d.reservation;
    const keys: string[] = [];
    // The decision's numbers as little-endian doubles; sendBatch joins a call's into one argument that
    // decide.lua reads with struct.unpack (the request id travels apart: it is any string).
    const packed = Buffer.allocUnsafe(8 * (4 + 5 * idx.length));
    packed.writeDoubleLE(d.atomic ? 1 : 0, 0);
    packed.writeDoubleLE(d.dryRun ? 1 : 0, 8);
    packed.writeDoubleLE(res ? Math.max(1, Math.ceil(res.ttlMs)) : 0, 16);
    packed.writeDoubleLE(idx.length, 24);
    let at = 32;
    for (const i of idx) {
      const op = d.ops[i]!;
      keys.push(p + op.key);
      if (op.kind === 'window') {
        at = writeOp(
          packed,
          at,
          OP_KIND.window,
          op.limit,
          op.windowMs,
          op.cost,
          (op.shadow ? 1 : 0) + (op.reserve === false ? 2 : 0),
        );
      } else if (op.kind === 'slot') {
        if (!res) throw new Error(`slot op ${op.key} needs decision.reservation`);
        keys.push(p + op.key + HELD_SUFFIX);
        const counted = op.expiredKey !== undefined && (op.expiredWindowMs ?? 0) > 0;
        if (counted) keys.push(p + op.expiredKey);
        at = writeOp(
          packed,
          at,
          OP_KIND.slot,
          op.limit,
          op.leaseMs,
          counted ? op.expiredWindowMs! : 0,
          op.longHeldMs ?? -1,
        );
      } else {
        at = writeOp(packed, at, OP_KIND.budget, op.limit, op.periodEndMs, 0, 0);
      }
    }
    if (res) keys.push(p + res.key);
    const slot = this.assertOneSlot(keys, 'decision');
    const requestId = res ? res.requestId : '';
    return new Promise((resolve, reject) => this.enqueue(slot, { keys, requestId, packed, resolve, reject }));
  }

  private enqueue(slot: number, q: Queued): void {
    let batch = this.batches.get(slot);
    if (!batch) {
      batch = { items: [], keys: 0 };
      this.batches.set(slot, batch);
    }
    if (batch.items.length === 0) this.due.push(batch);
    batch.items.push(q);
    batch.keys += q.keys.length;
    if (
      batch.items.length >= MAX_BATCH ||
      batch.keys >= (this.inFlight === 0 ? IDLE_BATCH_KEYS : MAX_BATCH_KEYS)
    ) {
      void this.sendBatch(take(batch));
    } else if (!this.flushing) {
      this.flushing = true;
      // After this turn's I/O callbacks: every decision their requests started is queued by then.
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushing = false;
    for (const batch of this.due) if (batch.items.length > 0) void this.sendBatch(take(batch));
    this.due.length = 0;
  };

  private async sendBatch(batch: Queued[]): Promise<void> {
    const keys: string[] = [];
    const args: (string | number | Buffer)[] = [
      this.clockArg(),
      batch.length,
      batch.length === 1 ? batch[0]!.packed : Buffer.concat(batch.map((q) => q.packed)),
    ];
    for (const q of batch) {
      for (const k of q.keys) keys.push(k);
      args.push(q.keys.length, q.requestId);
    }
    let replies: (Buffer | Error)[];
    this.inFlight++;
    try {
      replies = await this.run<(Buffer | Error)[]>(SCRIPTS.decide, keys, args, true);
    } catch (err) {
      for (const q of batch) q.reject(err);
      return;
    } finally {
      this.inFlight--;
    }
    batch.forEach((q, i) => {
      const r = replies[i]!;
      if (r instanceof Error) q.reject(this.classify(r));
      else q.resolve(unpackReply(r));
    });
  }

  private parseDecision(r: number[], ops: Op[], idx: number[], into?: DecisionResult): DecisionResult {
    const out: DecisionResult = into ?? {
      admitted: r[0] === 1,
      denied: r[1]!,
      nowMs: r[2]!,
      expiredLeases: r[3]!,
      states: new Array<OpState>(ops.length),
    };
    // Slot ops' held figures follow every op's state, in op order.
    let held = 4 + idx.length * 5;
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k]!;
      const s = state(r, 4 + k * 5);
      if (ops[i]!.kind === 'slot') {
        s.heldMs = r[held]!;
        if (r[held + 1]! >= 0) s.longHeld = r[held + 1]!;
        held += 2;
      }
      out.states[i] = s;
    }
    return out;
  }

  /** One script per slot, all sent at once; results merged in op order. */
  private async decideSplit(d: Decision, groups: number[][]): Promise<DecisionResult> {
    const replies = await Promise.all(groups.map((g) => this.runDecide(d, g)));
    const out: DecisionResult = {
      admitted: true,
      denied: -1,
      nowMs: 0,
      expiredLeases: 0,
      states: new Array<OpState>(d.ops.length),
    };
    for (let g = 0; g < groups.length; g++) {
      const r = replies[g]!;
      out.admitted &&= r[0] === 1;
      out.nowMs = Math.max(out.nowMs, r[2]!);
      out.expiredLeases += r[3]!;
      this.parseDecision(r, d.ops, groups[g]!, out);
    }
    return out;
  }

  private groupBySlot(ops: Op[]): Map<number, number[]> {
    const groups = new Map<number, number[]>();
    for (let i = 0; i < ops.length; i++) {
      const slot = clusterKeySlot(this.prefix + ops[i]!.key);
      const g = groups.get(slot);
      if (g) g.push(i);
      else groups.set(slot, [i]);
    }
    return groups;
  }

  /** The keys' one cluster slot (0 off a cluster). */
  private assertOneSlot(keys: string[], what: string): number {
    if (!this.isCluster) return 0;
    const slot = clusterKeySlot(keys[0]!);
    for (const k of keys) {
      if (clusterKeySlot(k) !== slot)
        throw new Error(`${what} spans cluster slots (${keys[0]}, ${k}): use one hash tag`);
    }
    return slot;
  }

  private clockArg(): number {
    return this.testClock ? this.testClock() : 0;
  }

  /** The script's reply, typed by the caller (each script's reply shape is documented in its .lua). */
  private async run<T>(
    script: Script,
    keys: string[],
    args: (string | number | Buffer)[],
    binary = false,
  ): Promise<T> {
    const send = (name: 'evalsha' | 'eval', body: string) =>
      this.client.sendCommand(new ScriptCommand(name, body, keys, args, binary)) as Promise<unknown>;
    try {
      let reply: unknown;
      try {
        reply = await send('evalsha', script.sha);
      } catch (err) {
        // Flushed, restarted or failed-over node: EVAL runs the script and caches it there again.
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        reply = await send('eval', script.lua);
      }
      this.failing = false;
      return reply as T;
    } catch (err) {
      throw this.classify(err);
    }
  }

  /** A transient failure becomes StoreUnavailableError (and the store unhealthy); others are bugs. */
  private classify(err: unknown): unknown {
    if (!isTransient(err)) return err;
    this.markFailing();
    return new StoreUnavailableError(`redis: ${(err as Error).message}`, { cause: err });
  }

  /**
   * Unhealthy until a command succeeds. A hung server can come back without a reconnect, and closed
   * mode may get no traffic while NOT_SERVING, so a PING probe notices the recovery.
   */
  private markFailing(): void {
    this.failing = true;
    if (this.probe) return;
    this.probe = setInterval(() => {
      if (this.client.status !== 'ready') return;
      this.client.ping().then(
        () => {
          this.failing = false;
          clearInterval(this.probe);
          this.probe = undefined;
        },
        () => {},
      );
    }, 250);
    this.probe.unref();
  }

  /** Settles once the scripts were sent to every master at the last (re)connect (tests wait on it). */
  scriptsLoaded(): Promise<void> {
    return this.loading.then(() => {});
  }

  /** SCRIPT LOAD on every master, best effort: a node that missed it gets the script by EVAL on NOSCRIPT. */
  private loadScripts(): Promise<unknown> {
    const nodes = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    return Promise.allSettled(
      nodes.flatMap((node) => Object.values(SCRIPTS).map((s) => node.script('LOAD', s.lua))),
    );
  }

  /** Re-measures the offset between the local clock and Redis TIME (half the round trip as latency). */
  async syncClock(): Promise<void> {
    if (this.client.status !== 'ready') return;
    const sent = this.localClock();
    try {
      const [sec, usec] = await this.client.time();
      const back = this.localClock();
      this.offsetMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - (sent + back) / 2;
    } catch {
      // Measured again on the next tick or reconnect.
    }
  }
}

/** decide.lua's packed reply: little-endian doubles, each an exact integer. */
function unpackReply(b: Buffer): number[] {
  const n = b.length >>> 3;
  const r = new Array<number>(n);
  for (let i = 0; i < n; i++) r[i] = b.readDoubleLE(i << 3);
  return r;
}

function state(r: number[], at: number): OpState {
  return {
    ok: r[at] === 1,
    used: r[at + 1]!,
    remaining: r[at + 2]!,
    resetMs: r[at + 3]!,
    retryMs: r[at + 4]!,
  };
}

/** Connection loss, timeouts and a node that cannot serve yet; other reply errors are bugs. */
function isTransient(err: unknown): boolean {
  if (!(err instanceof Error)) return true;
  if (err.name !== 'ReplyError') return true;
  return TRANSIENT.test(err.message);
}
