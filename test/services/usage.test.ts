import { create } from '@bufbuild/protobuf';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import {
  type DebitRequest,
  DebitRequestSchema,
  type DebitResponse,
  ReleaseRequestSchema,
  type ReleaseResponse,
} from '../../gen/ratekeeper/v1/usage_pb.js';
import { RkError } from '../../src/errors.js';
import { registry } from '../../src/metrics.js';
import { inferenceKeys as K, periodsAt } from '../../src/policy/inference-keys.js';
import { decideInference } from '../../src/services/rls-inference.js';
import { usageBinding } from '../../src/services/usage.js';
import type { WindowOp } from '../../src/store/store.js';
import type { CallContext } from '../../src/transport/types.js';
import {
  body,
  type Entries,
  type Env,
  headers,
  makeEnv,
  POLICY,
  rlsRequest,
  STORES,
  T0,
} from '../policy/inference-fixture.js';

const OK = RateLimitResponse_Code.OK;
const OVER = RateLimitResponse_Code.OVER_LIMIT;
const ctx: CallContext = { headers: new Headers(), signal: new AbortController().signal, peer: 'test' };

const metricValue = async (name: string, labels: Record<string, string>): Promise<number> => {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
};

describe.each(STORES)('UsageService on %s', (kind) => {
  let env: Env;
  let usage: ReturnType<typeof usageBinding>;
  beforeEach(async () => {
    env = await makeEnv(kind, POLICY);
    usage = usageBinding(env.deps);
  });
  afterEach(async () => {
    await env.close();
  });

  const decide = (...descriptors: Entries[]) => decideInference(rlsRequest(descriptors), env.deps);
  const debit = (
    r: Partial<Omit<DebitRequest, 'tokensIn' | 'tokensOut'>> & { tokensIn?: number; tokensOut?: number },
  ) =>
    usage.impl['debit']!(
      create(DebitRequestSchema, {
        ...r,
        tokensIn: BigInt(r.tokensIn ?? 0),
        tokensOut: BigInt(r.tokensOut ?? 0),
      } as never),
      ctx,
    ) as Promise<DebitResponse>;
  const release = (requestId: string, key = '', account = '') =>
    usage.impl['release']!(
      create(ReleaseRequestSchema, { requestId, key, account }),
      ctx,
    ) as Promise<ReleaseResponse>;
  const used = async (key: string, windowMs = 60_000): Promise<number> => {
    const op: WindowOp = { kind: 'window', key, limit: 1e12, windowMs, cost: 0 };
    return (await env.store.decide({ ops: [op], atomic: true, dryRun: true })).states[0]!.used;
  };
  const counter = async (key: string): Promise<number> =>
    (
      await env.store.decide({
        ops: [{ kind: 'budget', key, limit: 1e15, periodEndMs: T0 + 1e10 }],
        atomic: true,
        dryRun: true,
      })
    ).states[0]!.used;
  const err = async (p: Promise<unknown>): Promise<RkError> => {
    const e = await p.then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(RkError);
    return e as RkError;
  };
  const month = periodsAt(T0, 'UTC').month;

  it('settles the reservation: admitted with tokens=1000, debited 300 in / 200 out leaves TPM at 500', async () => {
    const adm = await decide({ key: 'k1', model: 'm-a', tokens: 1000, request_id: 'q1' });
    expect(adm.overallCode).toBe(OK);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(1000);
    env.clock.t += 5_000;
    const res = await debit({ requestId: 'q1', key: 'k1', model: 'm-a', tokensIn: 300, tokensOut: 200 });
    expect(res.duplicate).toBe(false);
    expect(res.admitted).toBe(true);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(300);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(200);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(500);
    const tok = res.limits.find((l) => l.metric === 'tokens' && l.scope === 'key');
    expect(tok).toMatchObject({ limit: 5000n, used: 500n, remaining: 4500n, windowSeconds: 60n });
    expect(res.limits.find((l) => l.metric === 'tokens_in')).toMatchObject({
      scope: 'account_model',
      used: 300n,
    });
    // The slot was released and nothing is left to correct: the reservation is gone.
    expect((await release('q1', 'k1')).released).toBe(false);
    expect((await env.storeKeys()).filter((k) => k.includes(':res:'))).toEqual([]);
  });

  it('split reservations settle per metric (reserved 800 in → actual 300 in)', async () => {
    await decide({ key: 'k1', model: 'm-a', tokens_in: 800, tokens_out: 400, request_id: 'q2' });
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(800);
    await debit({ requestId: 'q2', key: 'k1', model: 'm-a', tokensIn: 300, tokensOut: 200 });
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(300);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(200);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
  });

  it('spend matches the price table to the micro-dollar, into daily and monthly spend', async () => {
    // m-a: $2.50 / $10.00 per million → 300 × 2.5 + 200 × 10 = 2750 µ$.
    const a = await debit({ requestId: 's1', key: 'spender', model: 'm-a', tokensIn: 300, tokensOut: 200 });
    expect(a.spendMicros).toBe(2750n);
    // m-b: $0.15 / $0.60 → 333 × 0.15 + 777 × 0.6 = 49.95 + 466.2 = 516.15 → 516 µ$ (half up).
    const b = await debit({ requestId: 's2', key: 'spender', model: 'm-b', tokensIn: 333, tokensOut: 777 });
    expect(b.spendMicros).toBe(516n);
    expect(await counter(K.monthlySpend('spendco', 'k:spender', month))).toBe(3266);
    expect(await counter(K.dailySpend('spendco', 'k:spender', periodsAt(T0, 'UTC').day))).toBe(3266);
    expect(b.limits.find((l) => l.metric === 'monthly_spend')).toMatchObject({
      scope: 'key',
      limit: 1_000_000n,
      used: 3266n,
      remaining: 996_734n,
    });
    expect(b.limits.find((l) => l.metric === 'daily_spend')).toMatchObject({ limit: 500_000n, used: 3266n });
    // Uncapped metrics are counted but not listed as limits.
    expect(b.limits.find((l) => l.metric === 'monthly_tokens')).toBeUndefined();
    expect(await counter(K.monthlyTokens('spendco', 'k:spender', month))).toBe(1610);
    expect(env.debits.at(-1)).toMatchObject({
      keyRef: 'k:spender',
      spendMicros: 516,
      tokensIn: 333,
      tokensOut: 777,
    });
  });

  it('a retried debit counts once, sequentially and concurrently', async () => {
    await decide({ key: 'k1', model: 'm-a', tokens: 100, request_id: 'd1' });
    const first = await debit({ requestId: 'd1', key: 'k1', model: 'm-a', tokensIn: 40, tokensOut: 20 });
    const again = await debit({ requestId: 'd1', key: 'k1', model: 'm-a', tokensIn: 40, tokensOut: 20 });
    expect(first.duplicate).toBe(false);
    expect(again.duplicate).toBe(true);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(60);

    await decide({ key: 'k2', model: 'm-a', tokens: 100, request_id: 'd2' });
    const burst = await Promise.all(
      Array.from({ length: 8 }, () =>
        debit({ requestId: 'd2', key: 'k2', model: 'm-a', tokensIn: 10, tokensOut: 5 }),
      ),
    );
    expect(burst.filter((r) => !r.duplicate)).toHaveLength(1);
    expect(await used(K.keyTokens('acme', 'k:k2', 60_000))).toBe(15);
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(50);
    expect(await counter(K.monthlyTokens('acme', 'k:k2', month))).toBe(15);
    // Still remembered past the lease (1 min) and within lease + 1 h.
    env.clock.t += 60 * 60_000;
    expect(
      (await debit({ requestId: 'd2', key: 'k2', model: 'm-a', tokensIn: 10, tokensOut: 5 })).duplicate,
    ).toBe(true);
  });

  it('release frees the slot so the next request is admitted; releasing twice is harmless', async () => {
    for (let i = 0; i < 5; i++)
      expect((await decide({ key: 'k1', request_id: `h${i}` })).overallCode).toBe(OK);
    expect((await decide({ key: 'k1', request_id: 'h5' })).overallCode).toBe(OVER);
    expect((await release('h0', 'k1')).released).toBe(true);
    expect((await release('h0', 'k1')).released).toBe(false);
    expect((await decide({ key: 'k1', request_id: 'h5' })).overallCode).toBe(OK);
    // By account instead of key.
    expect((await release('h1', '', 'acme')).released).toBe(true);
    // A Debit with release=false keeps the slot; a later Release frees it.
    await debit({ requestId: 'h2', key: 'k1', model: 'm-a', tokensIn: 1, tokensOut: 1, release: false });
    expect((await release('h2', 'k1')).released).toBe(true);
  });

  it('a Debit after a Release still settles actual − reserved (admitted), once', async () => {
    await decide({ key: 'k1', model: 'm-a', tokens_in: 800, tokens_out: 400, request_id: 'dr1' });
    expect((await release('dr1', 'k1')).released).toBe(true);
    const res = await debit({ requestId: 'dr1', key: 'k1', model: 'm-a', tokensIn: 300, tokensOut: 200 });
    expect(res).toMatchObject({ admitted: true, duplicate: false });
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(300);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(200);
    expect((await debit({ requestId: 'dr1', key: 'k1', model: 'm-a', tokensIn: 300 })).duplicate).toBe(true);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect((await release('dr1', 'k1')).released).toBe(false);
  });

  it('expired leases free slots and are recorded per key', async () => {
    const metricBefore = await metricValue('ratekeeper_expired_slot_leases_total', {});
    for (let i = 0; i < 5; i++) await decide({ key: 'k2', request_id: `e${i}` });
    expect((await decide({ key: 'k2', request_id: 'e5' })).overallCode).toBe(OVER);
    env.clock.t = T0 + 60_001;
    expect((await decide({ key: 'k2', request_id: 'e6' })).overallCode).toBe(OK);
    expect(await used(K.keyExpired('acme', 'k:k2'), 3_600_000)).toBe(5);
    expect(await metricValue('ratekeeper_expired_slot_leases_total', {})).toBe(metricBefore + 5);
    expect(env.expiries.reduce((s, e) => s + e.count, 0)).toBe(5);
    // A late debit of an expired request still counts its usage (the reservation outlives the lease).
    const late = await debit({ requestId: 'e0', key: 'k2', model: 'm-a', tokensIn: 10, tokensOut: 0 });
    expect(late.admitted).toBe(true);
    expect(await counter(K.monthlyTokens('acme', 'k:k2', month))).toBe(10);
  });

  it('a request holding a key and an account × model slot counts as one expired lease', async () => {
    const metricBefore = await metricValue('ratekeeper_expired_slot_leases_total', {});
    for (let i = 0; i < 3; i++) await decide({ key: 'k2', model: 'm-a', request_id: `em${i}` });
    env.clock.t = T0 + 60_001;
    expect((await decide({ key: 'k2', model: 'm-a', request_id: 'em3' })).overallCode).toBe(OK);
    expect(await metricValue('ratekeeper_expired_slot_leases_total', {})).toBe(metricBefore + 3);
    expect(env.expiries.map((e) => e.count)).toEqual([3]);
    expect(await used(K.keyExpired('acme', 'k:k2'), 3_600_000)).toBe(3);
  });

  it('spend caps reached through debits deny the next request: daily 402, then monthly 402', async () => {
    expect((await decide({ key: 'spender', model: 'm-a', request_id: 'b1' })).overallCode).toBe(OK);
    // 60 000 output tokens at $10/M = $0.60 ≥ the $0.50 daily cap.
    await debit({ requestId: 'b1', key: 'spender', model: 'm-a', tokensOut: 60_000 });
    const day = await decide({ key: 'spender', model: 'm-a', request_id: 'b2' });
    expect(day.overallCode).toBe(OVER);
    expect(headers(day)['x-ratelimit-denied']).toBe('DAILY_SPEND_LIMIT_EXCEEDED');
    const dayEnd = Date.UTC(2026, 0, 15);
    expect(headers(day)['Retry-After']).toBe(String((dayEnd - env.clock.t) / 1000));
    expect(body(day).error).toMatchObject({
      type: 'quota_error',
      code: 'DAILY_SPEND_LIMIT_EXCEEDED',
      message: 'Daily spend limit reached: $0.60 of $0.50 used today.',
      details: {
        limit: 500_000,
        metric: 'daily_spend',
        scope: 'key',
        window_seconds: 86_400,
        reset: dayEnd / 1000,
      },
    });

    env.clock.t = dayEnd + 1000;
    expect((await decide({ key: 'spender', model: 'm-a', request_id: 'b3' })).overallCode).toBe(OK);
    await debit({ requestId: 'b3', key: 'spender', model: 'm-a', tokensOut: 45_000 });
    const mon = await decide({ key: 'spender', model: 'm-a', request_id: 'b4' });
    expect(headers(mon)['x-ratelimit-denied']).toBe('MONTHLY_SPEND_LIMIT_EXCEEDED');
    expect(body(mon).error).toMatchObject({
      type: 'quota_error',
      details: { limit: 1_000_000, metric: 'monthly_spend', reset: Date.UTC(2026, 1, 1) / 1000 },
    });
  });

  it('monthly tokens reached through debits: MONTHLY_TOKEN_LIMIT_EXCEEDED', async () => {
    await debit({ requestId: 't1', key: 'tokcap', model: 'm-b', tokensIn: 6000, tokensOut: 4000 });
    const res = await decide({ key: 'tokcap', request_id: 't2' });
    expect(headers(res)['x-ratelimit-denied']).toBe('MONTHLY_TOKEN_LIMIT_EXCEEDED');
    expect(body(res).error.message).toBe('Monthly token limit reached: 10000/10000 tokens used this month.');
  });

  it('a debit with no known admission still counts, and is counted in a metric', async () => {
    const before = await metricValue('ratekeeper_debits_total', { result: 'unreserved' });
    const res = await debit({ requestId: 'ghost', key: 'k1', model: 'm-a', tokensIn: 70, tokensOut: 30 });
    expect(res.admitted).toBe(false);
    expect(res.duplicate).toBe(false);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(100);
    expect(await metricValue('ratekeeper_debits_total', { result: 'unreserved' })).toBe(before + 1);
  });

  it('stream-done descriptors (entry usage, hits_addend = amount) debit and always answer OK', async () => {
    await decide({ key: 'k1', model: 'm-a', tokens: 1000, request_id: 'sd1' });
    const req = rlsRequest([
      { entries: { key: 'k1', model: 'm-a', request_id: 'sd1', usage: 'tokens_in' }, hitsAddend: 300 },
      { entries: { key: 'k1', model: 'm-a', request_id: 'sd1', usage: 'tokens_out' }, hitsAddend: 200 },
    ]);
    const res = await decideInference(req, env.deps);
    expect(res.overallCode).toBe(OK);
    expect(res.statuses.map((s) => s.code)).toEqual([OK, OK]);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(200);
    expect(env.debits.at(-1)).toMatchObject({ spendMicros: 2750, reserved: true });
    // Envoy retrying the same stream-done call counts once; the slot was released.
    await decideInference(req, env.deps);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect((await release('sd1', 'k1')).released).toBe(false);
    // Over every limit, a stream-done debit still answers OK.
    const big = rlsRequest([
      { entries: { key: 'k1', model: 'm-a', usage: 'tokens' }, hitsAddend: 1_000_000 },
    ]);
    expect((await decideInference(big, env.deps)).overallCode).toBe(OK);
  });

  it('stream-done tokens_in and tokens_out in separate calls each settle their own reservation', async () => {
    await decide({ key: 'k1', model: 'm-a', tokens_in: 800, tokens_out: 400, request_id: 'sp1' });
    const part = (usage: string, amount: number) =>
      decideInference(
        rlsRequest([{ entries: { key: 'k1', model: 'm-a', request_id: 'sp1', usage }, hitsAddend: amount }]),
        env.deps,
      );
    expect((await part('tokens_in', 300)).overallCode).toBe(OK);
    // The first call freed the slot; the reservation stays for the second.
    expect((await release('sp1', 'k1')).released).toBe(false);
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(300);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(400);
    expect((await part('tokens_out', 200)).overallCode).toBe(OK);
    expect(env.debits.at(-1)).toMatchObject({ reserved: true, duplicate: false, tokensOut: 200 });
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(300);
    expect(await used(K.modelTokensOut('acme', 'm-a', 60_000))).toBe(200);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(500);
    // Envoy retrying either call counts it once.
    await part('tokens_in', 300);
    await part('tokens_out', 200);
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(500);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(500);
  });

  it('stream-done for a model the policy cannot price settles tokens at no spend and frees the slot', async () => {
    const before = await metricValue('ratekeeper_unpriced_debits_total', {});
    const done = (id: string, key = 'k1') =>
      decideInference(
        rlsRequest([
          { entries: { key, model: 'ghost-model', request_id: id, usage: 'tokens_in' }, hitsAddend: 30 },
          { entries: { key, model: 'ghost-model', request_id: id, usage: 'tokens_out' }, hitsAddend: 20 },
        ]),
        env.deps,
      );
    // Admitted with the key's limits (free: 5 concurrent); each stream-done debit must free its slot.
    for (let i = 0; i < 5; i++) {
      const id = `u${i}`;
      expect(
        (await decide({ key: 'k1', model: 'ghost-model', tokens: 100, request_id: id })).overallCode,
      ).toBe(OK);
      const res = await done(id);
      expect(res.overallCode).toBe(OK);
      expect(res.statuses.map((s) => s.code)).toEqual([OK, OK]);
    }
    const sixth = await decide({ key: 'k1', model: 'ghost-model', tokens: 100, request_id: 'u5' });
    expect(sixth.overallCode).toBe(OK);
    // Each reservation of 100 settled to 50 actual; counted in monthly tokens; no spend.
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(5 * 50 + 100);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(250);
    expect(await counter(K.monthlySpend('acme', 'k:k1', month))).toBe(0);
    expect(await counter(K.dailySpend('acme', 'k:k1', periodsAt(T0, 'UTC').day))).toBe(0);
    expect(env.debits.at(-1)).toMatchObject({ model: 'ghost-model', spendMicros: 0, reserved: true });
    // A retried stream-done call counts once, and is not counted as unpriced again.
    await done('u4');
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(250);
    expect(await metricValue('ratekeeper_unpriced_debits_total', {})).toBe(before + 5);
    const warnings = env.logs.filter((l) => l.includes('does not price'));
    expect(warnings).toHaveLength(5);
    expect(JSON.parse(warnings[0]!)).toMatchObject({ level: 40, key: 'k:k1', model: 'ghost-model' });
    // A raw key is logged by its hash reference only.
    const raw = 'sk-unpriced-raw-SECRET-5';
    await decide({ key: raw, model: 'ghost-model', tokens: 10, request_id: 'u-raw' });
    expect((await done('u-raw', raw)).overallCode).toBe(OK);
    expect(env.logs.filter((l) => l.includes('does not price'))).toHaveLength(6);
    expect(env.logs.join('\n')).not.toContain(raw);
    // UsageService.Debit stays strict: the caller there can Release.
    const e = await err(debit({ requestId: 'u5', key: 'k1', model: 'ghost-model', tokensIn: 1 }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.field).toBe('model');
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(250);
  });

  it('stream-done without a model entry (no x-model) settles the key at no spend and frees the slot', async () => {
    const before = await metricValue('ratekeeper_unpriced_debits_total', {});
    const done = (id: string, key = 'k1') =>
      decideInference(
        rlsRequest([
          { entries: { key, request_id: id, usage: 'tokens_in' }, hitsAddend: 30 },
          { entries: { key, request_id: id, usage: 'tokens_out' }, hitsAddend: 20 },
        ]),
        env.deps,
      );
    // [key, request_id] admissions take a key slot (free: 5 concurrent, 10/min); each debit must
    // free it, so more than the limit get in one after another.
    for (let i = 0; i < 7; i++) {
      const id = `nm${i}`;
      expect((await decide({ key: 'k1', tokens: 100, request_id: id })).overallCode).toBe(OK);
      const res = await done(id);
      expect(res.overallCode).toBe(OK);
      expect(res.statuses.map((s) => s.code)).toEqual([OK, OK]);
    }
    // Each reservation of 100 settled to 50 actual; counted in monthly tokens; no spend.
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(7 * 50);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(350);
    expect(await counter(K.monthlySpend('acme', 'k:k1', month))).toBe(0);
    expect(await counter(K.dailySpend('acme', 'k:k1', periodsAt(T0, 'UTC').day))).toBe(0);
    expect(env.debits.at(-1)).toMatchObject({ model: '', spendMicros: 0, reserved: true, tokens: 50 });
    // Envoy retrying a call counts it once, and it is not counted as unpriced again.
    await done('nm3');
    await done('nm6');
    expect(await used(K.keyTokens('acme', 'k:k1', 60_000))).toBe(7 * 50);
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(350);
    expect(await metricValue('ratekeeper_unpriced_debits_total', {})).toBe(before + 7);
    const warnings = env.logs.filter((l) => l.includes('without a model entry'));
    expect(warnings).toHaveLength(7);
    const w = JSON.parse(warnings[0]!) as Record<string, unknown>;
    expect(w).toMatchObject({ level: 40, key: 'k:k1', account: 'acme', requestId: 'nm0' });
    expect(w).not.toHaveProperty('model');
    // A raw key is logged by its hash reference only.
    const raw = 'sk-no-model-raw-SECRET-9';
    await decide({ key: raw, tokens: 10, request_id: 'nm-raw' });
    expect((await done('nm-raw', raw)).overallCode).toBe(OK);
    expect(env.logs.filter((l) => l.includes('without a model entry'))).toHaveLength(8);
    expect(env.logs.join('\n')).not.toContain(raw);
    // UsageService.Debit stays strict: an empty model is refused there.
    const e = await err(debit({ requestId: 'nm0', key: 'k1', model: '', tokensIn: 1 }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.field).toBe('model');
    expect(await counter(K.monthlyTokens('acme', 'k:k1', month))).toBe(350);
  });

  it('raw keys in Debit and Release never reach store keys, logs or events', async () => {
    const raw = 'sk-usage-raw-SECRET-77';
    env.deps.log.level = 'trace';
    await decide({ key: raw, model: 'm-a', tokens: 10, request_id: 'rk1' });
    await debit({ requestId: 'rk1', key: raw, model: 'm-a', tokensIn: 5, tokensOut: 5 });
    await debit({ requestId: 'rk-ghost', key: raw, model: 'm-a', tokensIn: 5, tokensOut: 5 });
    await release('rk1', raw);
    await err(debit({ requestId: 'rk2', key: raw, model: 'ghost' }));
    const keys = await env.storeKeys();
    expect(keys.length).toBeGreaterThan(3);
    for (const k of keys) expect(k).not.toContain(raw);
    expect(env.logs.join('\n')).not.toContain(raw);
    expect(env.logs.some((l) => l.includes('debit without a known admission'))).toBe(true);
    expect(JSON.stringify(env.debits)).not.toContain(raw);
  });

  it('bad input is INVALID_ARGUMENT naming the field, with nothing applied', async () => {
    const ok = { requestId: 'x1', key: 'k1', model: 'm-a', tokensIn: 1, tokensOut: 1 };
    expect((await err(debit({ ...ok, requestId: '' }))).field).toBe('request_id');
    expect((await err(debit({ ...ok, key: '' }))).field).toBe('key');
    expect((await err(debit({ ...ok, model: '' }))).field).toBe('model');
    expect((await err(debit({ ...ok, model: 'no-such-model' }))).field).toBe('model');
    expect((await err(debit({ ...ok, tokensIn: -1 }))).field).toBe('tokens_in');
    expect((await err(debit({ ...ok, tokensOut: -5 }))).field).toBe('tokens_out');
    expect((await err(debit({ ...ok, tokensOut: 2e9 }))).field).toBe('tokens_out');
    expect((await err(debit({ ...ok, tier: 'gold' }))).field).toBe('tier');
    expect((await err(release(''))).field).toBe('request_id');
    expect((await err(release('x1'))).field).toBe('key');
    const sd = (entries: Entries, hitsAddend?: number) =>
      err(
        decideInference(rlsRequest([hitsAddend === undefined ? entries : { entries, hitsAddend }]), env.deps),
      );
    expect((await sd({ key: 'k1', model: 'm-a', usage: 'watts' }, 3)).field).toBe(
      'descriptors[0].entries[2].value',
    );
    expect(await env.storeKeys()).toEqual([]);
    expect(env.debits).toHaveLength(0);
  });
});
