import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { parseInferencePolicy } from '../../src/config/inference.js';
import { parseConfigFiles } from '../../src/config/load.js';
import { hashWithPepper } from '../../src/keys/hash.js';
import { periodsAt } from '../../src/policy/inference-keys.js';
import { spendMicros } from '../../src/policy/usage.js';
import { policyFrom } from './inference-fixture.js';

const HEAD = 'kind: inference-policy\n';

/** The single issue a bad policy file produces, through the real loader (file, line, field). */
const issueOf = (text: string, env: NodeJS.ProcessEnv = {}) => {
  try {
    parseConfigFiles([{ file: 'policy.yaml', text }], { env });
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).issues[0]!;
  }
  throw new Error('expected a ConfigError');
};

describe('inference policy schema', () => {
  it('applies the contract defaults: a default tier of 60 requests/min and 5 concurrent, lease 10 min', () => {
    const p = policyFrom(HEAD);
    expect(p.domain).toBe('inference');
    expect(p.unknownKeys).toBe('allow');
    expect(p.timezone).toBe('UTC');
    expect(p.leaseMs).toBe(600_000);
    expect(p.concurrencyRetryAfterMs).toBe(1_000);
    expect(p.defaultTier).toBe('default');
    expect(p.tiers.get('default')).toMatchObject({
      requests: { limit: 60, window: 'minute', windowMs: 60_000 },
      concurrent: 5,
    });
    expect(p.tiers.get('default')?.tokens).toBeUndefined();
  });

  it('reads every limit notation; a blank limit is unlimited, an absent one takes the default', () => {
    const p = policyFrom(`${HEAD}
tiers:
  a: { requests: 100/hour, tokens: 30, concurrent: 2 }
  b: { requests: { limit: 7, window: day }, tokens: "5 per second" }
  c:
    requests:
    concurrent:
  d:
`);
    expect(p.defaultTier).toBe('a');
    expect(p.tiers.get('a')).toMatchObject({
      requests: { limit: 100, windowMs: 3_600_000 },
      tokens: { limit: 30, window: 'minute' },
      concurrent: 2,
    });
    expect(p.tiers.get('b')).toMatchObject({
      requests: { limit: 7, window: 'day' },
      tokens: { limit: 5, windowMs: 1000 },
      concurrent: 5,
    });
    expect(p.tiers.get('c')?.requests).toBeUndefined();
    expect(p.tiers.get('c')?.concurrent).toBeUndefined();
    expect(p.tiers.get('d')).toMatchObject({ requests: { limit: 60 }, concurrent: 5 });
  });

  it('models: prices in micro-dollars per million, lease override, per-tier and * limits', () => {
    const p = policyFrom(`${HEAD}
lease: 90s
tiers: { free: {} }
models:
  m:
    price: { input_per_million_usd: 2.5, output_per_million_usd: 0.075 }
    lease: 2h
    limits:
      free: { tokens_in: 1000/minute, tokens_out: null }
      "*": { requests: 3/second }
  "*": { price: { input_per_million_usd: 1, output_per_million_usd: 1 } }
`);
    expect(p.leaseMs).toBe(90_000);
    const m = p.models.get('m')!;
    expect(m.price).toEqual({ inputMicrosPerMillion: 2_500_000, outputMicrosPerMillion: 75_000 });
    expect(m.leaseMs).toBe(7_200_000);
    expect(m.limits.get('free')).toMatchObject({ tokensIn: { limit: 1000 }, tokensOut: undefined });
    expect(m.limits.get('*')?.requests).toMatchObject({ limit: 3, windowMs: 1000 });
    expect(p.models.get('*')?.leaseMs).toBe(90_000);
  });

  it('concurrency_retry_after: top level (default 1s), per-model override, else inherited', () => {
    const p = policyFrom(`${HEAD}
concurrency_retry_after: 5s
models:
  slow: { concurrency_retry_after: 30 }
  fast: {}
`);
    expect(p.concurrencyRetryAfterMs).toBe(5_000);
    expect(p.models.get('slow')?.concurrencyRetryAfterMs).toBe(30_000);
    expect(p.models.get('fast')?.concurrencyRetryAfterMs).toBe(5_000);
    expect(policyFrom(`${HEAD}models: { m: {} }\n`).models.get('m')?.concurrencyRetryAfterMs).toBe(1_000);
    expect(issueOf(`${HEAD}concurrency_retry_after: 0s\n`)).toMatchObject({
      line: 2,
      field: 'concurrency_retry_after',
    });
    expect(issueOf(`${HEAD}concurrency_retry_after: soon\n`)).toMatchObject({
      field: 'concurrency_retry_after',
    });
    expect(issueOf(`${HEAD}models:\n  m: { concurrency_retry_after: -1 }\n`)).toMatchObject({
      line: 3,
      field: 'models.m.concurrency_retry_after',
    });
  });

  it('static keys: sha256 hashes, raw keys from the environment hashed with the pepper, caps in micro-dollars', () => {
    const env = { PEP: 'pp', K2: 'sk-raw-2' };
    const p = policyFrom(
      `${HEAD}
pepper_env: PEP
tiers: { free: {}, pro: {} }
keys:
  - { id: a, hash: "sha256:${'ab'.repeat(32)}", account: acme, tier: pro, max_tokens: 10, monthly_tokens: 5, monthly_spend_usd: 12.5, daily_spend_usd: 0.25 }
  - { id: b, key_env: K2, disabled: true, disabled_reason: leaked }
  - { id: c, account: acme, max_tokens: }
`,
      env,
    );
    expect(p.pepper).toBe('pp');
    expect(p.keysById.get('a')).toMatchObject({
      hash: 'ab'.repeat(32),
      account: 'acme',
      tier: 'pro',
      caps: {
        maxTokensPerRequest: 10,
        monthlyTokens: 5,
        monthlySpendMicros: 12_500_000,
        dailySpendMicros: 250_000,
      },
      disabled: false,
    });
    const b = p.keysByHash.get(hashWithPepper('sk-raw-2', 'pp'))!;
    expect(b).toMatchObject({
      id: 'b',
      account: 'b',
      tier: 'free',
      disabled: true,
      disabledReason: 'leaked',
    });
    expect(JSON.stringify([...p.keysById.values()])).not.toContain('sk-raw-2');
    expect(p.keysById.get('c')?.caps).toEqual({});
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p.keysById.get('a'))).toBe(true);
  });

  it('bad files name file, line and field', () => {
    expect(issueOf(`${HEAD}tiers:\n  free:\n    requests: lots/minute\n`)).toMatchObject({
      file: 'policy.yaml',
      line: 4,
      field: 'tiers.free.requests',
    });
    expect(issueOf(`${HEAD}tiers:\n  free: { requests: 5/fortnight }\n`)).toMatchObject({
      field: 'tiers.free.requests',
    });
    expect(issueOf(`${HEAD}tiers:\n  free: { request: 5 }\n`)).toMatchObject({
      line: 3,
      field: 'tiers.free.request',
    });
    expect(issueOf(`${HEAD}tiers:\n  free: { requests: -1 }\n`)).toMatchObject({
      field: 'tiers.free.requests',
    });
    expect(issueOf(`${HEAD}default_tier: gold\ntiers: { free: {} }\n`)).toMatchObject({
      line: 2,
      field: 'default_tier',
    });
    expect(issueOf(`${HEAD}tiers: { free: {} }\nmodels:\n  m:\n    limits:\n      gold: {}\n`)).toMatchObject(
      {
        field: 'models.m.limits.gold',
      },
    );
    expect(issueOf(`${HEAD}tiers: { free: {} }\nkeys:\n  - { id: a, tier: gold }\n`)).toMatchObject({
      line: 4,
      field: 'keys[0].tier',
    });
    expect(issueOf(`${HEAD}keys:\n  - { id: a }\n  - { id: a }\n`)).toMatchObject({ field: 'keys[1].id' });
    expect(issueOf(`${HEAD}keys:\n  - { id: a, hash: "md5:00" }\n`)).toMatchObject({ field: 'keys[0].hash' });
    expect(issueOf(`${HEAD}keys:\n  - { id: a, key_env: NOPE }\n`)).toMatchObject({
      field: 'keys[0].key_env',
    });
    expect(issueOf(`${HEAD}keys:\n  - { id: "a b" }\n`)).toMatchObject({ field: 'keys[0].id' });
    expect(issueOf(`${HEAD}timezone: Mars/Olympus\n`)).toMatchObject({ line: 2, field: 'timezone' });
    expect(issueOf(`${HEAD}pepper_env: UNSET_PEPPER\n`)).toMatchObject({ field: 'pepper_env' });
    expect(issueOf(`${HEAD}unknown_keys: maybe\n`)).toMatchObject({ field: 'unknown_keys' });
    expect(issueOf(`${HEAD}lease: forever\n`)).toMatchObject({ field: 'lease' });
    expect(
      issueOf(`${HEAD}models:\n  m: { price: { input_per_million_usd: -1, output_per_million_usd: 1 } }\n`),
    ).toMatchObject({
      field: 'models.m.price.input_per_million_usd',
    });
  });

  it('parses without the loader too (a source that knows no lines)', () => {
    expect(() =>
      parseInferencePolicy({ kind: 'inference-policy', lease: 0 }, { file: 'x', lineOf: () => undefined }),
    ).toThrow(/x: lease:/);
  });
});

describe('calendar periods in the policy time zone', () => {
  it('UTC month and day', () => {
    const p = periodsAt(Date.UTC(2026, 1, 28, 23, 59), 'UTC');
    expect(p).toMatchObject({
      month: '2026-02',
      day: '2026-02-28',
      monthStartMs: Date.UTC(2026, 1, 1),
      monthEndMs: Date.UTC(2026, 2, 1),
      dayEndMs: Date.UTC(2026, 2, 1),
    });
    expect(periodsAt(Date.UTC(2026, 11, 31, 12), 'UTC').monthEndMs).toBe(Date.UTC(2027, 0, 1));
  });

  it('a zone west of UTC: still January in New York at 03:00 UTC on Feb 1; a 23-hour DST day', () => {
    const p = periodsAt(Date.UTC(2026, 1, 1, 3), 'America/New_York');
    expect(p.month).toBe('2026-01');
    expect(p.monthEndMs).toBe(Date.UTC(2026, 1, 1, 5));
    const dst = periodsAt(Date.UTC(2026, 2, 8, 12), 'America/New_York');
    expect(dst.day).toBe('2026-03-08');
    expect(dst.dayEndMs - dst.dayStartMs).toBe(23 * 3_600_000);
  });
});

describe('spend', () => {
  const price = { inputMicrosPerMillion: 2_500_000, outputMicrosPerMillion: 10_000_000 };
  it('is exact in integer micro-dollars, rounded half up once per debit', () => {
    expect(spendMicros(price, { tokensIn: 300, tokensOut: 200 })).toBe(2750);
    expect(
      spendMicros(
        { inputMicrosPerMillion: 150_000, outputMicrosPerMillion: 600_000 },
        { tokensIn: 1, tokensOut: 0 },
      ),
    ).toBe(0);
    expect(spendMicros({ inputMicrosPerMillion: 500_000, outputMicrosPerMillion: 0 }, { tokensIn: 1 })).toBe(
      1,
    );
    // A billion tokens at $60/M: $60 000 without float error.
    expect(
      spendMicros({ inputMicrosPerMillion: 0, outputMicrosPerMillion: 60_000_000 }, { tokensOut: 1e9 }),
    ).toBe(6e10);
  });
  it('charges an unsplit total at the higher price; no price, no spend', () => {
    expect(spendMicros(price, { tokens: 1000 })).toBe(10_000);
    expect(spendMicros(undefined, { tokensIn: 1000 })).toBe(0);
  });
});
