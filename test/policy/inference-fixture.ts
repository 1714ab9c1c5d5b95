/**
 * Shared set-up for the inference and usage tests: a policy from YAML text, an injected clock, a
 * store (memory, or Redis on a throwaway server with the test clock), captured logs, and helpers to
 * build requests and read counters back without consuming anything.
 */
import { create } from '@bufbuild/protobuf';
import { Cluster, Redis } from 'ioredis';
import { pino } from 'pino';
import { inject } from 'vitest';
import { parse } from 'yaml';
import {
  RateLimitDescriptor_EntrySchema,
  RateLimitDescriptorSchema,
} from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  type RateLimitResponse,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { type InferencePolicy, parseInferencePolicy } from '../../src/config/inference.js';
import type { KeyDirectory, StoredKey } from '../../src/keys/types.js';
import type { Deps, RuntimeConfig } from '../../src/services/deps.js';
import type { AdmissionEvent, DebitEvent, LeaseExpiryEvent } from '../../src/services/inference-events.js';
import { MemoryStore } from '../../src/store/memory.js';
import { RedisStore } from '../../src/store/redis.js';
import type { LimiterStore } from '../../src/store/store.js';

/** Start of a UTC day, far from month ends, a multiple of every bucket size used. */
export const T0 = Date.UTC(2026, 0, 14);

/** The policy most inference and usage tests run under. */
export const POLICY = `
kind: inference-policy
pepper: test-pepper
default_tier: free
lease: 1m
tiers:
  free: { requests: 10/minute, tokens: 5000/minute, concurrent: 5 }
  pro: { requests: 100/minute, tokens: 100000/minute, concurrent: 20 }
models:
  m-a:
    price: { input_per_million_usd: 2.5, output_per_million_usd: 10 }
    limits:
      free: { requests: 8/minute, tokens_in: 3000/minute, tokens_out: 2000/minute, concurrent: 3 }
      pro: { requests: 50/minute, tokens_in: 50000/minute, tokens_out: 20000/minute }
  m-b:
    price: { input_per_million_usd: 0.15, output_per_million_usd: 0.6 }
    limits:
      "*": { requests: 8/minute }
keys:
  - { id: k1, account: acme, tier: free }
  - { id: k2, account: acme, tier: free }
  - { id: other, account: globex, tier: free }
  - { id: capped, account: capco, tier: pro, max_tokens: 1000, monthly_tokens: 10000, monthly_spend_usd: 1, daily_spend_usd: 0.5 }
  - { id: off, account: acme, tier: free, disabled: true }
  - { id: spender, account: spendco, tier: pro, monthly_spend_usd: 1, daily_spend_usd: 0.5 }
  - { id: tokcap, account: tokco, tier: pro, monthly_tokens: 10000 }
`;

/** Every test runs on each: the embedded store, one Redis, and a 3-master Redis Cluster. */
export const STORES = ['memory', 'redis', 'cluster'] as const;
export type StoreKind = (typeof STORES)[number];

export const policyFrom = (yaml: string, env: NodeJS.ProcessEnv = {}): InferencePolicy =>
  parseInferencePolicy(parse(yaml), { file: 'test.yaml', lineOf: () => undefined }, env);

export class MapDirectory implements KeyDirectory {
  readonly keys = new Map<string, StoredKey>();
  byId(id: string) {
    return this.keys.get(id);
  }
  byHash(hash: string) {
    for (const k of this.keys.values()) if (k.hash === hash) return k;
    return undefined;
  }
}

export interface Env {
  deps: Deps;
  store: LimiterStore;
  clock: { t: number };
  logs: string[];
  dir: MapDirectory;
  decisions: AdmissionEvent[];
  debits: DebitEvent[];
  expiries: LeaseExpiryEvent[];
  setPolicy(yaml: string): void;
  /** Every store key currently held (Redis: SCAN; memory: the store's maps). */
  storeKeys(): Promise<string[]>;
  close(): Promise<void>;
}

let seq = 0;

export async function makeEnv(kind: StoreKind, yaml: string): Promise<Env> {
  const clock = { t: T0 };
  const logs: string[] = [];
  const log = pino({ level: 'trace' }, { write: (s: string) => logs.push(s) });
  let store: LimiterStore;
  let storeKeys: () => Promise<string[]>;
  let closeExtra = async () => {};
  if (kind === 'memory') {
    const mem = new MemoryStore({ now: () => clock.t, sweepIntervalMs: 0 });
    store = mem;
    storeKeys = async () => {
      const out: string[] = [];
      for (const v of Object.values(mem)) if (v instanceof Map) out.push(...(v.keys() as Iterable<string>));
      return out;
    };
  } else {
    const client =
      kind === 'redis'
        ? new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 })
        : new Cluster(
            inject('redisClusterNodes').map((hp) => {
              const [host, port] = hp.split(':');
              return { host: host!, port: Number(port) };
            }),
          );
    const prefix = `inf${process.pid}-${++seq}:`;
    const rs = new RedisStore(client, { prefix, testClock: () => clock.t });
    store = rs;
    // The store loads its scripts on 'ready'.
    if (client.status !== 'ready') await new Promise((r) => client.once('ready', r));
    storeKeys = async () => {
      const nodes = client instanceof Cluster ? client.nodes('master') : [client];
      const all = await Promise.all(nodes.map((n) => n.keys(`${prefix}*`)));
      return all.flat();
    };
    closeExtra = async () => {
      await rs.close();
      client.disconnect();
    };
  }
  let config: RuntimeConfig = { domains: new Map(), inference: policyFrom(yaml) };
  const dir = new MapDirectory();
  const decisions: AdmissionEvent[] = [];
  const debits: DebitEvent[] = [];
  const expiries: LeaseExpiryEvent[] = [];
  const deps: Deps = {
    store,
    config: () => config,
    keys: dir,
    log,
    events: {
      onDecision: (e) => decisions.push(e),
      onDebit: (e) => debits.push(e),
      onLeaseExpired: (e) => expiries.push(e),
    },
  };
  return {
    deps,
    store,
    clock,
    logs,
    dir,
    decisions,
    debits,
    expiries,
    setPolicy: (y) => {
      config = { domains: new Map(), inference: policyFrom(y) };
    },
    storeKeys,
    close: async () => {
      await store.close();
      await closeExtra();
    },
  };
}

export type Entries = Record<string, string | number>;

/** A ShouldRateLimit request from descriptors given as entry maps. */
export const rlsRequest = (
  descriptors: (Entries | { entries: Entries; hitsAddend?: number })[],
  domain = 'inference',
): RateLimitRequest =>
  create(RateLimitRequestSchema, {
    domain,
    descriptors: descriptors.map((d) => {
      const entries = ('entries' in d && typeof d.entries === 'object' ? d.entries : d) as Entries;
      const hits = 'hitsAddend' in d && typeof d.hitsAddend === 'number' ? d.hitsAddend : undefined;
      return create(RateLimitDescriptorSchema, {
        entries: Object.entries(entries).map(([key, value]) =>
          create(RateLimitDescriptor_EntrySchema, { key, value: String(value) }),
        ),
        ...(hits !== undefined ? { hitsAddend: BigInt(hits) } : {}),
      });
    }),
  });

export const headers = (res: RateLimitResponse): Record<string, string> =>
  Object.fromEntries(res.responseHeadersToAdd.map((h) => [h.key, h.value]));

export const body = (
  res: RateLimitResponse,
): { error: { type: string; message: string; code: string; details: Record<string, unknown> } } =>
  JSON.parse(new TextDecoder().decode(res.rawBody));
