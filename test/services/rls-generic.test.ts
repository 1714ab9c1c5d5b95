import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import { parseConfigFiles } from '../../src/config/load.js';
import { DEFAULT_GENERIC_HEADERS, UNLIMITED_REMAINING } from '../../src/policy/generic.js';
import type { RuntimeConfig } from '../../src/services/deps.js';
import { decideGeneric, type GenericOptions } from '../../src/services/rls-generic.js';
import { MemoryStore } from '../../src/store/memory.js';
import { codes, type Desc, genericRequest } from '../policy/generic-fixture.js';

const { OK, OVER_LIMIT } = RateLimitResponse_Code;

const CONFIG = `
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: remote_address
    value: 203.0.113.66
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: path
    value: /v1/login
    rate_limit: {name: login, unit: minute, requests_per_unit: 2}
  - key: path
    value: /v1/*
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: client_id
    descriptors:
      - key: path
        value: /v1/login
        rate_limit:
          replaces: [{name: login}]
          unit: minute
          requests_per_unit: 4
  - key: client_id
    value: internal
    rate_limit: {unlimited: true}
  - key: user_id
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
`;

const configOf = (text: string): RuntimeConfig => parseConfigFiles([{ file: 'edge.yaml', text }]);

describe('decideGeneric with the memory store', () => {
  let now: number;
  let store: MemoryStore;
  let config: RuntimeConfig;
  const decide = (descs: Desc[], hits = 0, options?: GenericOptions, domain?: string) =>
    decideGeneric(genericRequest(domain ?? 'edge', descs, hits), { store, config: () => config }, options);
  const ip = (v: string): Desc => ({ e: [['remote_address', v]] });

  beforeEach(() => {
    now = Date.UTC(2026, 0, 1);
    store = new MemoryStore({ now: () => now, sweepIntervalMs: 0 });
    config = configOf(CONFIG);
  });
  afterEach(() => store.close());

  it('admits up to the limit, then OVER_LIMIT until the window slides', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await decide([ip('1.1.1.1')]);
      expect(r.overallCode).toBe(OK);
      expect(r.statuses[0]).toMatchObject({
        limitRemaining: 2 - i,
        currentLimit: { requestsPerUnit: 3, unit: 2 },
      });
      now += 1_000;
    }
    const denied = await decide([ip('1.1.1.1')]);
    expect(codes(denied)).toEqual([OVER_LIMIT, OVER_LIMIT]);
    expect(denied.statuses[0]!.limitRemaining).toBe(0);
    // The first hit (3 s ago) leaves the 60 s window in about 57 s.
    const wait = Number(denied.statuses[0]!.durationUntilReset!.seconds);
    expect(wait).toBeGreaterThanOrEqual(56);
    expect(wait).toBeLessThanOrEqual(58);
    // Another client has its own window.
    expect((await decide([ip('2.2.2.2')])).overallCode).toBe(OK);
    now += wait * 1_000;
    expect((await decide([ip('1.1.1.1')])).overallCode).toBe(OK);
  });

  it('a blocked value (0 per unit) is always over; unconfigured descriptors and domains are OK without limit', async () => {
    const r = await decide([ip('203.0.113.66'), { e: [['unknown', 'x']] }]);
    expect(codes(r)).toEqual([OVER_LIMIT, OVER_LIMIT, OK]);
    expect(r.statuses[1]!.currentLimit).toBeUndefined();
    const other = await decide([ip('203.0.113.66')], 0, undefined, 'not-configured');
    expect(codes(other)).toEqual([OK, OK]);
    expect(other.statuses[0]!.currentLimit).toBeUndefined();
  });

  it('each descriptor counts on its own: one over its limit does not stop the others counting', async () => {
    const login: Desc = { e: [['path', '/v1/login']] };
    await decide([login, ip('9.9.9.9')]);
    await decide([login, ip('9.9.9.9')]);
    const r = await decide([login, ip('9.9.9.9')]);
    expect(codes(r)).toEqual([OVER_LIMIT, OVER_LIMIT, OK]);
    expect(r.statuses[1]!.limitRemaining).toBe(0);
  });

  it('wildcards: every path under /v1/ has its own 5/s window', async () => {
    for (let i = 0; i < 5; i++) expect((await decide([{ e: [['path', '/v1/a']] }])).overallCode).toBe(OK);
    expect((await decide([{ e: [['path', '/v1/a']] }])).overallCode).toBe(OVER_LIMIT);
    expect((await decide([{ e: [['path', '/v1/b']] }])).statuses[0]).toMatchObject({
      code: OK,
      limitRemaining: 4,
      currentLimit: { requestsPerUnit: 5, unit: 1 },
    });
  });

  it('hits_addend: request level, descriptor level, and 0 checks without counting', async () => {
    const r = await decide([ip('5.5.5.5')], 2);
    expect(r.statuses[0]!.limitRemaining).toBe(1);
    const check = await decide([{ ...ip('5.5.5.5'), hits: 0 }], 7);
    expect(check.statuses[0]).toMatchObject({ code: OK, limitRemaining: 1 });
    expect((await decide([{ ...ip('5.5.5.5'), hits: 2 }], 1)).overallCode).toBe(OVER_LIMIT);
    // Denied requests consume nothing: one unit is still free.
    expect((await decide([{ ...ip('5.5.5.5'), hits: 1 }])).statuses[0]).toMatchObject({
      code: OK,
      limitRemaining: 0,
    });
    expect((await decide([{ ...ip('5.5.5.5'), hits: 0 }])).overallCode).toBe(OK);
  });

  it('replaces: with the client descriptor present, the client login limit applies instead of the global one', async () => {
    const login: Desc = { e: [['path', '/v1/login']] };
    const clientLogin: Desc = {
      e: [
        ['client_id', 'acme'],
        ['path', '/v1/login'],
      ],
    };
    for (let i = 0; i < 4; i++) {
      const r = await decide([login, clientLogin]);
      expect(codes(r)).toEqual([OK, OK, OK]);
      expect(r.statuses[0]!.currentLimit).toBeUndefined();
      expect(r.statuses[1]!.currentLimit?.requestsPerUnit).toBe(4);
    }
    expect(codes(await decide([login, clientLogin]))).toEqual([OVER_LIMIT, OK, OVER_LIMIT]);
    // The global login window was never touched.
    expect((await decide([login])).statuses[0]!.limitRemaining).toBe(1);
  });

  it('unlimited answers OK with limit_remaining MaxUint32 and takes no store round trip', async () => {
    const calls: number[] = [];
    const counting = {
      store: Object.assign(Object.create(store), {
        decide: (d: Parameters<MemoryStore['decide']>[0]) => {
          calls.push(d.ops.length);
          return store.decide(d);
        },
      }),
      config: () => config,
    };
    const r = await decideGeneric(genericRequest('edge', [{ e: [['client_id', 'internal']] }]), counting);
    expect(r.statuses[0]).toMatchObject({ code: OK, limitRemaining: UNLIMITED_REMAINING });
    expect(r.statuses[0]!.currentLimit).toBeUndefined();
    expect(calls).toEqual([]);
  });

  it('shadow mode counts and reports but never denies', async () => {
    const user: Desc = { e: [['user_id', 'u1']] };
    for (let i = 0; i < 5; i++) {
      const r = await decide([user]);
      expect(r.overallCode).toBe(OK);
      expect(r.statuses[0]).toMatchObject({ code: OK, limitRemaining: i < 2 ? 1 - i : 0 });
    }
  });

  it('a descriptor limit override applies its own rate and unit', async () => {
    const over: Desc = { ...ip('7.7.7.7'), limit: { requestsPerUnit: 1, unit: RateLimitUnit.SECOND } };
    const first = await decide([over]);
    expect(first.statuses[0]).toMatchObject({
      code: OK,
      currentLimit: { requestsPerUnit: 1, unit: 1, name: '' },
    });
    const denied = await decide([over]);
    expect(denied.overallCode).toBe(OVER_LIMIT);
    // Sliding: the hit leaves after one second plus a sub-bucket, reported rounded up.
    expect(denied.statuses[0]!.durationUntilReset!.seconds).toBe(2n);
    now += 2_000;
    expect((await decide([over])).overallCode).toBe(OK);
    // The configured per-minute window is separate from the override's per-second one.
    expect((await decide([ip('7.7.7.7')])).statuses[0]!.limitRemaining).toBe(2);
  });

  it('a reloaded config applies to the next request', async () => {
    await decide([ip('8.8.8.8')]);
    await decide([ip('8.8.8.8')]);
    config = configOf(CONFIG.replace('requests_per_unit: 3}', 'requests_per_unit: 10}'));
    const r = await decide([ip('8.8.8.8')]);
    expect(r.statuses[0]).toMatchObject({
      code: OK,
      limitRemaining: 7,
      currentLimit: { requestsPerUnit: 10 },
    });
  });

  it('response headers only when enabled', async () => {
    expect((await decide([ip('6.6.6.6')])).responseHeadersToAdd).toEqual([]);
    const r = await decide([ip('6.6.6.6')], 0, { responseHeaders: DEFAULT_GENERIC_HEADERS });
    const headers = Object.fromEntries(r.responseHeadersToAdd.map((h) => [h.key, h.value]));
    expect(headers).toMatchObject({ 'RateLimit-Limit': '3', 'RateLimit-Remaining': '1' });
    // Seconds until the whole limit is back: one window plus at most a sub-bucket.
    expect(Number(headers['RateLimit-Reset'])).toBeGreaterThanOrEqual(60);
    expect(Number(headers['RateLimit-Reset'])).toBeLessThanOrEqual(61);
  });
});
