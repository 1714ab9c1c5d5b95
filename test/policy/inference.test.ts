import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RkError } from '../../src/errors.js';
import { hashWithPepper } from '../../src/keys/hash.js';
import { resolveKey } from '../../src/keys/resolve.js';
import { inferenceKeys as K } from '../../src/policy/inference-keys.js';
import { decideInference } from '../../src/services/rls-inference.js';
import { debit } from '../../src/services/usage.js';
import { withFailureMode } from '../../src/store/factory.js';
import { type LimiterStore, StoreUnavailableError, type WindowOp } from '../../src/store/store.js';
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
} from './inference-fixture.js';

const OK = RateLimitResponse_Code.OK;
const OVER = RateLimitResponse_Code.OVER_LIMIT;

describe.each(STORES)('inference domain on %s', (kind) => {
  let env: Env;
  let n = 0;
  beforeEach(async () => {
    env = await makeEnv(kind, POLICY);
  });
  afterEach(async () => {
    await env.close();
  });

  const decide = (...descriptors: Entries[]) => decideInference(rlsRequest(descriptors), env.deps);
  const rid = () => `r${++n}`;
  /** Decides, then frees the slot at once (a request that finished), so concurrency never binds. */
  const decideDone = async (account: string, d: Entries) => {
    const id = rid();
    const res = await decide({ ...d, request_id: id });
    await env.store.release(K.reservation(account, id));
    return res;
  };
  /** Units counted in a window now, read with a dry-run decision (consumes nothing). */
  const used = async (key: string, windowMs = 60_000): Promise<number> => {
    const op: WindowOp = { kind: 'window', key, limit: 1e12, windowMs, cost: 0 };
    return (await env.store.decide({ ops: [op], atomic: true, dryRun: true })).states[0]!.used;
  };
  const err = async (p: Promise<unknown>): Promise<RkError> => {
    const e = await p.then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(RkError);
    return e as RkError;
  };

  it('admits with per-descriptor statuses and the rate headers of the binding limits', async () => {
    const res = await decide(
      { key: 'k1' },
      { key: 'k1', model: 'm-a', tokens_in: 100, tokens_out: 50, request_id: rid() },
    );
    expect(res.overallCode).toBe(OK);
    expect(res.statuses).toHaveLength(2);
    // key-only descriptor: the key's binding limit (tokens 150/5000 vs requests 1/10: requests is closer).
    expect(res.statuses[0]!.currentLimit?.name).toBe('key:requests');
    expect(res.statuses[0]!.currentLimit?.requestsPerUnit).toBe(10);
    expect(res.statuses[0]!.limitRemaining).toBe(9);
    // model descriptor: account × model (requests 1/8 used).
    expect(res.statuses[1]!.currentLimit?.name).toBe('account_model:requests');
    expect(res.statuses[1]!.limitRemaining).toBe(7);
    const h = headers(res);
    expect(h['X-RateLimit-Limit']).toBe('8');
    expect(h['X-RateLimit-Remaining']).toBe('7');
    expect(Number(h['X-RateLimit-Reset'])).toBeGreaterThan(T0 / 1000);
    expect(Number(h['X-RateLimit-Reset'])).toBeLessThanOrEqual(T0 / 1000 + 61);
    expect(h['x-ratelimit-limit-requests']).toBe('8');
    expect(h['x-ratelimit-remaining-requests']).toBe('7');
    expect(h['x-ratelimit-limit-tokens']).toBe('5000');
    expect(h['x-ratelimit-remaining-tokens']).toBe('4850');
    expect(h['x-ratelimit-limit-tokens-in']).toBe('3000');
    expect(h['x-ratelimit-remaining-tokens-in']).toBe('2900');
    expect(h['x-ratelimit-limit-tokens-out']).toBe('2000');
    expect(h['x-ratelimit-remaining-tokens-out']).toBe('1950');
    expect(h['x-ratelimit-window']).toBe('60');
    expect(h['Retry-After']).toBeUndefined();
    expect(res.rawBody).toHaveLength(0);
    expect(res.requestHeadersToAdd).toHaveLength(0);
  });

  it('generates a request id when none is sent and returns it to Envoy', async () => {
    const res = await decide({ key: 'k1', model: 'm-a' });
    expect(res.overallCode).toBe(OK);
    const h = res.requestHeadersToAdd.find((x) => x.key === 'x-ratelimit-request-id');
    expect(h?.value).toMatch(/^[0-9a-f-]{36}$/);
    expect(env.decisions.at(-1)?.requestId).toBe(h?.value);
  });

  it('answers descriptors without a key OK with no limit', async () => {
    const res = await decide({ path: '/v1/chat' }, { key: 'k1' });
    expect(res.overallCode).toBe(OK);
    expect(res.statuses[0]!.currentLimit).toBeUndefined();
    expect(res.statuses[1]!.currentLimit?.name).toBe('key:requests');
    const none = await decide({ path: '/v1/chat' });
    expect(none.overallCode).toBe(OK);
    expect(none.responseHeadersToAdd).toHaveLength(0);
  });

  it('KEY_DISABLED: 402 quota_error ahead of an exhausted rate, with the rate headers, consuming nothing', async () => {
    // The disabled key shares acme's account: exhaust what it would be charged against anyway.
    for (let i = 0; i < 8; i++) await decideDone('acme', { key: 'k1', model: 'm-a' });
    expect((await decide({ key: 'k2', model: 'm-a', request_id: rid() })).overallCode).toBe(OVER);
    const res = await decide({ key: 'off', model: 'm-a', tokens_in: 10, tokens_out: 5, request_id: 'off1' });
    expect(res.overallCode).toBe(OVER);
    expect(headers(res)).toEqual({
      'X-RateLimit-Limit': '8',
      'X-RateLimit-Remaining': '0',
      'X-RateLimit-Reset': String(T0 / 1000 + 61),
      'x-ratelimit-limit-requests': '8',
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-limit-tokens': '5000',
      'x-ratelimit-remaining-tokens': '5000',
      'x-ratelimit-limit-tokens-in': '3000',
      'x-ratelimit-remaining-tokens-in': '3000',
      'x-ratelimit-limit-tokens-out': '2000',
      'x-ratelimit-remaining-tokens-out': '2000',
      'x-ratelimit-window': '60',
      // No Retry-After: a disabled key stays refused until an operator enables it.
      'x-ratelimit-denied': 'KEY_DISABLED',
    });
    expect(body(res).error).toMatchObject({ type: 'quota_error', code: 'KEY_DISABLED' });
    expect(res.statuses[0]!.code).toBe(OVER);
    expect(await used(K.modelRequests('acme', 'm-a', 60_000))).toBe(8);
    expect(await used(K.keyRequests('acme', 'k:off', 60_000))).toBe(0);
    expect(await used(K.modelTokensIn('acme', 'm-a', 60_000))).toBe(0);
    // No slot and no reservation were taken.
    expect(await env.store.release(K.reservation('acme', 'off1'))).toBe(false);
    expect(env.decisions.at(-1)).toMatchObject({ admitted: false, code: 'KEY_DISABLED' });
    expect(env.decisions.at(-1)?.retryMs).toBeUndefined();
  });

  it('a policy denial makes one store call, and stands when the store is down', async () => {
    let calls = 0;
    let down = false;
    const inner = env.deps.store;
    const counted: LimiterStore = {
      now: () => inner.now(),
      decide: (d) => {
        calls++;
        return down ? Promise.reject(new StoreUnavailableError('test: store down')) : inner.decide(d);
      },
      settle: (x) => inner.settle(x),
      release: (k) => inner.release(k),
      healthy: () => !down,
      close: async () => {},
    };
    env.deps.store = counted;
    try {
      const res = await decide({ key: 'off', model: 'm-a', request_id: rid() });
      expect(calls).toBe(1);
      expect(headers(res)['x-ratelimit-limit-tokens-in']).toBe('3000');
      down = true;
      const blind = await decide({ key: 'off', model: 'm-a', request_id: rid() });
      expect(blind.overallCode).toBe(OVER);
      expect(headers(blind)).toEqual({ 'x-ratelimit-denied': 'KEY_DISABLED' });
      expect(body(blind).error.code).toBe('KEY_DISABLED');
      // Closed failure mode answers UNAVAILABLE: the denial stands, an admission is refused.
      env.deps.store = withFailureMode(counted, 'closed', { onFailure: () => {} });
      expect(headers(await decide({ key: 'off', request_id: rid() }))['x-ratelimit-denied']).toBe(
        'KEY_DISABLED',
      );
      expect((await err(decide({ key: 'k1', request_id: rid() }))).code).toBe('UNAVAILABLE');
    } finally {
      env.deps.store = inner;
    }
  });

  it('MAX_TOKENS_LIMIT_EXCEEDED: 400 invalid_request_error from tokens_out, else tokens', async () => {
    const a = await decide({
      key: 'capped',
      model: 'm-a',
      tokens_out: 1001,
      tokens_in: 5,
      request_id: rid(),
    });
    expect(headers(a)['x-ratelimit-denied']).toBe('MAX_TOKENS_LIMIT_EXCEEDED');
    expect(body(a).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'MAX_TOKENS_LIMIT_EXCEEDED',
      details: { limit: 1000, requested: 1001, metric: 'max_tokens', scope: 'key' },
    });
    // The rate headers of a decision, what the request would cost not counted; no Retry-After.
    expect(headers(a)).toMatchObject({
      'X-RateLimit-Limit': '100',
      'X-RateLimit-Remaining': '100',
      'x-ratelimit-remaining-tokens': '100000',
      'x-ratelimit-remaining-tokens-out': '20000',
    });
    expect(headers(a)['Retry-After']).toBeUndefined();
    const b = await decide({ key: 'capped', tokens: 1001, request_id: rid() });
    expect(headers(b)['x-ratelimit-denied']).toBe('MAX_TOKENS_LIMIT_EXCEEDED');
    // tokens_out wins over tokens when both are sent.
    const c = await decide({ key: 'capped', tokens: 5000, tokens_out: 1000, request_id: rid() });
    expect(c.overallCode).toBe(OK);
    expect(await used(K.keyRequests('capco', 'k:capped', 60_000))).toBe(1);
  });

  it('checks run in contract order: disabled > max_tokens > budgets > concurrency > requests > tokens', async () => {
    const denied = async (d: Entries) =>
      headers(await decide({ ...d, request_id: rid() }))['x-ratelimit-denied'];
    // k2: requests exhausted and tokens would be too → RATE_LIMIT_EXCEEDED (requests before tokens).
    for (let i = 0; i < 10; i++) await decideDone('acme', { key: 'k2', tokens: 400 });
    expect(await denied({ key: 'k2', tokens: 2000 })).toBe('RATE_LIMIT_EXCEEDED');
    // k1: 5/5 slots held and tokens short → CONCURRENT_LIMIT_EXCEEDED (concurrency before tokens).
    for (let i = 0; i < 5; i++) await decide({ key: 'k1', tokens: 900, request_id: `o${i}` });
    expect(await denied({ key: 'k1', tokens: 900 })).toBe('CONCURRENT_LIMIT_EXCEEDED');
    // Monthly tokens used up (debited, slot kept) → MONTHLY_TOKEN_LIMIT_EXCEEDED before concurrency.
    env.dir.keys.set('k1', { id: 'k1', caps: { monthlyTokens: 100 } });
    const p = env.deps.config().inference!;
    await debit(
      env.deps,
      p,
      resolveKey('k1', p, env.dir),
      'm-a',
      p.models.get('m-a')!,
      { tokensIn: 150, tokensOut: 0 },
      'o0',
      false,
    );
    expect(await denied({ key: 'k1', tokens: 900 })).toBe('MONTHLY_TOKEN_LIMIT_EXCEEDED');
    // A per-request cap is checked before budgets, a disabled key before everything.
    env.dir.keys.set('k1', { id: 'k1', caps: { monthlyTokens: 100, maxTokensPerRequest: 500 } });
    expect(await denied({ key: 'k1', tokens: 900 })).toBe('MAX_TOKENS_LIMIT_EXCEEDED');
    env.dir.keys.set('k1', {
      id: 'k1',
      disabled: true,
      caps: { monthlyTokens: 100, maxTokensPerRequest: 500 },
    });
    expect(await denied({ key: 'k1', tokens: 900 })).toBe('KEY_DISABLED');
  });

  it('CONCURRENT_LIMIT_EXCEEDED at 5/5 with {limit:5, active:5}; admitted again once a lease expires', async () => {
    for (let i = 0; i < 5; i++) {
      env.clock.t += 1000;
      expect((await decide({ key: 'k1', request_id: `c${i}` })).overallCode).toBe(OK);
    }
    env.clock.t += 1000;
    const res = await decide({ key: 'k1', request_id: 'c5' });
    expect(res.overallCode).toBe(OVER);
    const h = headers(res);
    expect(h['x-ratelimit-denied']).toBe('CONCURRENT_LIMIT_EXCEEDED');
    const b = body(res);
    expect(b.error.type).toBe('rate_limit_error');
    expect(b.error.message).toBe('Concurrent prediction limit exceeded. 5/5 predictions running.');
    expect(b.error.details).toMatchObject({
      limit: 5,
      active: 5,
      metric: 'concurrency',
      scope: 'key',
      window_seconds: 60,
    });
    expect(Object.keys(b.error.details)).toEqual([
      'limit',
      'active',
      'metric',
      'scope',
      'window_seconds',
      'reset',
    ]);
    // No true time until a slot frees: the policy's advice (default 1 s), not the 55 s until the
    // oldest slot's lease (taken at T0+1s, lease 60 s) expires; that is details.reset, the upper bound.
    expect(h['Retry-After']).toBe('1');
    expect(res.statuses[0]!.durationUntilReset?.seconds).toBe(1n);
    expect(b.error.details['reset']).toBe(T0 / 1000 + 61);
    expect(env.decisions.at(-1)).toMatchObject({ admitted: false, retryMs: 1000 });
    // A denied request consumed nothing: still 5 requests counted.
    expect(await used(K.keyRequests('acme', 'k:k1', 60_000))).toBe(5);

    env.clock.t = T0 + 61_000;
    const again = await decide({ key: 'k1', request_id: 'c6' });
    expect(again.overallCode).toBe(OK);
    expect(env.expiries.reduce((s, e) => s + e.count, 0)).toBe(1);
    expect(env.expiries[0]).toMatchObject({ keyRef: 'k:k1', account: 'acme' });
    expect(await used(K.keyExpired('acme', 'k:k1'), 3_600_000)).toBe(1);
  });

  it('concurrency Retry-After: the policy setting, per-model override, capped by the oldest lease expiry', async () => {
    env.setPolicy(
      `${POLICY.replace('  m-a:\n', '  m-a:\n    concurrency_retry_after: 2m\n')}concurrency_retry_after: 20s\n`,
    );
    for (let i = 0; i < 5; i++) {
      env.clock.t += 1000;
      expect((await decide({ key: 'k1', request_id: `c${i}` })).overallCode).toBe(OK);
    }
    // T0+5s: the oldest lease ends at T0+61s, beyond the 20 s advice.
    let res = await decide({ key: 'k1', request_id: 'c5' });
    expect(headers(res)['Retry-After']).toBe('20');
    expect(res.statuses[0]!.durationUntilReset?.seconds).toBe(20n);
    expect(body(res).error.details).toMatchObject({ window_seconds: 60, reset: T0 / 1000 + 61 });
    expect(env.decisions.at(-1)).toMatchObject({ admitted: false, retryMs: 20_000 });
    // T0+50.5s: the oldest lease frees a slot in 10.5 s, sooner than the advice.
    env.clock.t = T0 + 50_500;
    res = await decide({ key: 'k1', request_id: 'c6' });
    expect(headers(res)['Retry-After']).toBe('11');
    expect(res.statuses[0]!.durationUntilReset?.seconds).toBe(10n);
    expect(res.statuses[0]!.durationUntilReset?.nanos).toBe(500_000_000);
    expect(env.decisions.at(-1)).toMatchObject({ retryMs: 10_500 });

    // Account × model slots of m-a (free: 3) take the model's 2 m, capped at the oldest lease (60 s).
    for (let i = 0; i < 3; i++) {
      expect((await decide({ key: 'k2', model: 'm-a', request_id: `m${i}` })).overallCode).toBe(OK);
    }
    env.clock.t += 1000;
    res = await decide({ key: 'k2', model: 'm-a', request_id: 'm3' });
    expect(headers(res)['x-ratelimit-denied']).toBe('CONCURRENT_LIMIT_EXCEEDED');
    expect(body(res).error.details).toMatchObject({ scope: 'account_model', active: 3 });
    expect(headers(res)['Retry-After']).toBe('59');
    // Windows keep their true Retry-After.
    env.setPolicy(POLICY);
    for (let i = 0; i < 10; i++) await decideDone('globex', { key: 'other' });
    res = await decide({ key: 'other', request_id: rid() });
    expect(headers(res)['x-ratelimit-denied']).toBe('RATE_LIMIT_EXCEEDED');
    expect(Number(headers(res)['Retry-After'])).toBeGreaterThan(50);
  });

  it("decision events carry the key's held slots: the oldest's age and how many are held long", async () => {
    env.setPolicy(`${POLICY}signals:\n  runaway: { held_longer_than: 30s }\n`);
    await decide({ key: 'k1', model: 'm-a', request_id: 'h1' });
    expect(env.decisions.at(-1)?.held).toEqual({ oldestMs: 0, long: 0 });
    env.clock.t += 20_000;
    await decide({ key: 'k1', model: 'm-a', request_id: 'h2' });
    env.clock.t += 20_000;
    // Another key of the account shares the account × model slots, not the key's.
    await decide({ key: 'k2', model: 'm-a', request_id: 'h3' });
    expect(env.decisions.at(-1)?.held).toEqual({ oldestMs: 0, long: 0 });
    await decide({ key: 'k1', request_id: 'h4' });
    expect(env.decisions.at(-1)?.held).toEqual({ oldestMs: 40_000, long: 1 });
    await env.store.release(K.reservation('acme', 'h1'));
    await decide({ key: 'k1', request_id: 'h5' });
    expect(env.decisions.at(-1)?.held).toEqual({ oldestMs: 20_000, long: 0 });
  });

  it('RATE_LIMIT_EXCEEDED with Retry-After equal to the real time until admission', async () => {
    env.clock.t = T0 + 500;
    for (let i = 0; i < 10; i++) {
      expect((await decideDone('acme', { key: 'k2' })).overallCode).toBe(OK);
      env.clock.t += 2_000;
    }
    const res = await decide({ key: 'k2', request_id: rid() });
    expect(res.overallCode).toBe(OVER);
    const h = headers(res);
    expect(h['x-ratelimit-denied']).toBe('RATE_LIMIT_EXCEEDED');
    expect(h['X-RateLimit-Remaining']).toBe('0');
    expect(body(res).error).toMatchObject({
      type: 'rate_limit_error',
      code: 'RATE_LIMIT_EXCEEDED',
      details: { limit: 10, metric: 'requests', scope: 'key', window_seconds: 60 },
    });
    const retry = Number(h['Retry-After']);
    expect(retry).toBeGreaterThan(0);
    const deniedAt = env.clock.t;
    env.clock.t = deniedAt + (retry - 1) * 1000;
    expect((await decide({ key: 'k2', request_id: rid() })).overallCode).toBe(OVER);
    env.clock.t = deniedAt + retry * 1000;
    expect((await decide({ key: 'k2', request_id: rid() })).overallCode).toBe(OK);
  });

  it('TOKEN_RATE_LIMIT_EXCEEDED names the metric; a denial moves no other counter', async () => {
    const ok = await decide({ key: 'k1', model: 'm-a', tokens_in: 2500, tokens_out: 100, request_id: rid() });
    expect(ok.overallCode).toBe(OK);
    const before = {
      keyReq: await used(K.keyRequests('acme', 'k:k1', 60_000)),
      keyTok: await used(K.keyTokens('acme', 'k:k1', 60_000)),
      amReq: await used(K.modelRequests('acme', 'm-a', 60_000)),
      amIn: await used(K.modelTokensIn('acme', 'm-a', 60_000)),
      amOut: await used(K.modelTokensOut('acme', 'm-a', 60_000)),
    };
    expect(before).toEqual({ keyReq: 1, keyTok: 2600, amReq: 1, amIn: 2500, amOut: 100 });
    const res = await decide({ key: 'k1', model: 'm-a', tokens_in: 600, tokens_out: 10, request_id: rid() });
    expect(res.overallCode).toBe(OVER);
    expect(headers(res)['x-ratelimit-denied']).toBe('TOKEN_RATE_LIMIT_EXCEEDED');
    expect(body(res).error.details).toMatchObject({
      limit: 3000,
      metric: 'tokens_in',
      scope: 'account_model',
    });
    // The model descriptor reports the denial.
    expect(res.statuses[0]!.code).toBe(OVER);
    expect(res.statuses[0]!.currentLimit?.name).toBe('account_model:tokens_in');
    const after = {
      keyReq: await used(K.keyRequests('acme', 'k:k1', 60_000)),
      keyTok: await used(K.keyTokens('acme', 'k:k1', 60_000)),
      amReq: await used(K.modelRequests('acme', 'm-a', 60_000)),
      amIn: await used(K.modelTokensIn('acme', 'm-a', 60_000)),
      amOut: await used(K.modelTokensOut('acme', 'm-a', 60_000)),
    };
    expect(after).toEqual(before);
    // No slot was taken either: four more requests fit under concurrency 5 (3 per model on m-a).
    for (let i = 0; i < 4; i++) expect((await decide({ key: 'k1', request_id: rid() })).overallCode).toBe(OK);
  });

  it('a request larger than a token limit can never fit: no Retry-After, a message that says so', async () => {
    const res = await decide({ key: 'k1', tokens: 5001, request_id: rid() });
    expect(headers(res)['x-ratelimit-denied']).toBe('TOKEN_RATE_LIMIT_EXCEEDED');
    expect(headers(res)['Retry-After']).toBeUndefined();
    expect(body(res).error.message).toBe(
      'Token rate limit exceeded: this request needs 5001 tokens, above the limit of 5000 per minute.',
    );
    expect(body(res).error.details).toMatchObject({ limit: 5000, metric: 'tokens', scope: 'key' });
  });

  it('a token limit with nothing reserved denies once the counted usage reaches it', async () => {
    expect((await decide({ key: 'k1', model: 'm-a', tokens_out: 2000, request_id: rid() })).overallCode).toBe(
      OK,
    );
    const res = await decide({ key: 'k1', model: 'm-a', request_id: rid() });
    expect(res.overallCode).toBe(OVER);
    expect(body(res).error.details).toMatchObject({ metric: 'tokens_out', limit: 2000 });
  });

  it('two keys of one account share account × model buckets, not key buckets', async () => {
    for (let i = 0; i < 4; i++) await decide({ key: 'k1', model: 'm-b', request_id: rid() });
    for (let i = 0; i < 4; i++) await decide({ key: 'k2', model: 'm-b', request_id: rid() });
    expect(await used(K.keyRequests('acme', 'k:k1', 60_000))).toBe(4);
    expect(await used(K.keyRequests('acme', 'k:k2', 60_000))).toBe(4);
    const res = await decide({ key: 'k2', model: 'm-b', request_id: rid() });
    expect(res.overallCode).toBe(OVER);
    expect(body(res).error.details).toMatchObject({ metric: 'requests', scope: 'account_model', limit: 8 });
    // Another account's bucket is its own.
    expect((await decide({ key: 'other', model: 'm-b', request_id: rid() })).overallCode).toBe(OK);
  });

  it('a burst on model A leaves model B untouched', async () => {
    for (let i = 0; i < 8; i++) await decideDone('acme', { key: 'k1', model: 'm-a' });
    const denied = await decide({ key: 'k2', model: 'm-a', request_id: rid() });
    expect(body(denied).error.details).toMatchObject({ metric: 'requests', scope: 'account_model' });
    expect(await used(K.modelRequests('acme', 'm-b', 60_000))).toBe(0);
    const b = await decide({ key: 'k2', model: 'm-b', request_id: rid() });
    expect(b.overallCode).toBe(OK);
    expect(headers(b)['x-ratelimit-remaining-requests']).toBe('7');
  });

  it('a model not listed has no account × model limits unless a "*" entry covers it, with its own buckets', async () => {
    const free = await decide({ key: 'k1', model: 'unlisted', request_id: rid() });
    expect(free.overallCode).toBe(OK);
    expect(headers(free)['x-ratelimit-limit-requests']).toBe('10');
    env.setPolicy(POLICY.replace('\nkeys:', '\n  "*": { limits: { "*": { requests: 2/minute } } }\nkeys:'));
    for (let i = 0; i < 2; i++) await decideDone('acme', { key: 'k1', model: 'x-1' });
    expect((await decide({ key: 'k1', model: 'x-1', request_id: rid() })).overallCode).toBe(OVER);
    expect((await decide({ key: 'k1', model: 'x-2', request_id: rid() })).overallCode).toBe(OK);
  });

  it('unregistered keys: descriptor tier/account, else default tier and own account', async () => {
    const raw = 'sk-live-unregistered-0001';
    const a = await decide({ key: raw, model: 'm-a', request_id: rid() });
    expect(a.overallCode).toBe(OK);
    const ref = `h:${hashWithPepper(raw, 'test-pepper')}`;
    expect(env.decisions.at(-1)).toMatchObject({ keyRef: ref, account: ref, tier: 'free' });
    const b = await decide({ key: raw, tier: 'pro', account: 'acme', request_id: rid() });
    expect(b.overallCode).toBe(OK);
    expect(headers(b)['x-ratelimit-limit-requests']).toBe('100');
    expect(env.decisions.at(-1)).toMatchObject({ keyRef: ref, account: 'acme', tier: 'pro' });
  });

  it('a tier hint the policy does not define is ignored (a refusal would make Envoy fail open)', async () => {
    const res = await decide({ key: 'sk-tierless', tier: 'gold', request_id: rid() });
    expect(res.overallCode).toBe(OK);
    expect(headers(res)['x-ratelimit-limit-requests']).toBe('10');
    expect(env.decisions.at(-1)?.tier).toBe('free');
    const long = await decide({ key: 'x'.repeat(600), model: 'y'.repeat(600), account: 'z'.repeat(600) });
    expect(long.overallCode).toBe(OK);
  });

  it('unknown_keys: deny refuses unregistered keys with KEY_UNKNOWN', async () => {
    env.setPolicy(POLICY.replace('pepper: test-pepper', 'pepper: test-pepper\nunknown_keys: deny'));
    const res = await decide({ key: 'sk-nobody', request_id: rid() });
    expect(res.overallCode).toBe(OVER);
    expect(headers(res)['x-ratelimit-denied']).toBe('KEY_UNKNOWN');
    expect(headers(res)['x-ratelimit-limit-requests']).toBe('10');
    expect(headers(res)['Retry-After']).toBeUndefined();
    expect(body(res).error).toMatchObject({ type: 'invalid_request_error', code: 'KEY_UNKNOWN' });
    expect((await decide({ key: 'k1', request_id: rid() })).overallCode).toBe(OK);
  });

  it('admin-managed keys override the policy record; cleared caps are unlimited', async () => {
    env.dir.keys.set('capped', { id: 'capped', tier: 'free', clearedCaps: ['maxTokensPerRequest'] });
    const res = await decide({ key: 'capped', tokens_out: 1500, request_id: rid() });
    expect(res.overallCode).toBe(OK);
    expect(headers(res)['x-ratelimit-limit-requests']).toBe('10');
    env.dir.keys.set('capped', { id: 'capped', disabled: true });
    expect(headers(await decide({ key: 'capped', request_id: rid() }))['x-ratelimit-denied']).toBe(
      'KEY_DISABLED',
    );
  });

  it('raw keys never reach logs, events or store keys', async () => {
    const raw = 'sk-secret-raw-key-XYZ123';
    env.deps.log.level = 'trace';
    for (let i = 0; i < 12; i++) await decide({ key: raw, model: 'm-a', tokens: 10, request_id: `raw${i}` });
    const keys = await env.storeKeys();
    expect(keys.length).toBeGreaterThan(0);
    for (const k of keys) expect(k).not.toContain(raw);
    expect(env.logs.join('\n')).not.toContain(raw);
    expect(env.logs.some((l) => l.includes('inference denied'))).toBe(true);
    expect(JSON.stringify(env.decisions)).not.toContain(raw);
  });

  it('a policy reload changes the limits of the next request', async () => {
    for (let i = 0; i < 10; i++) await decideDone('acme', { key: 'k1' });
    expect((await decideDone('acme', { key: 'k1' })).overallCode).toBe(OVER);
    env.setPolicy(POLICY.replace('free: { requests: 10/minute', 'free: { requests: 20/minute'));
    const res = await decide({ key: 'k1', request_id: rid() });
    expect(res.overallCode).toBe(OK);
    expect(headers(res)['x-ratelimit-limit-requests']).toBe('20');
  });

  it('bad input is INVALID_ARGUMENT naming the field', async () => {
    const conflict = await err(decide({ key: 'k1', model: 'm-a' }, { key: 'k1', model: 'm-b' }));
    expect(conflict.code).toBe('INVALID_ARGUMENT');
    expect(conflict.field).toBe('descriptors[1].entries[1].value');
    expect((await err(decide({ key: 'k1', tokens: -1 }))).field).toBe('descriptors[0].entries[1].value');
    expect((await err(decide({ key: 'k1', tokens_in: '1.5' }))).field).toBe(
      'descriptors[0].entries[1].value',
    );
    expect((await err(decide({ key: 'k1', tokens_out: '2000000000' }))).message).toContain('at most');
    expect((await err(decide({ key: 'k1' }, { key: 'k2' }))).field).toBe('descriptors[1].entries[0].value');
    const twoRaw = await err(decide({ key: 'sk-raw-one' }, { key: 'sk-raw-two' }));
    expect(twoRaw.message).not.toMatch(/sk-raw/);
    // Nothing was counted by any refused request.
    expect(await used(K.keyRequests('acme', 'k:k1', 60_000))).toBe(0);
  });
});
