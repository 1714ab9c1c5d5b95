import { describe, expect, it } from 'vitest';
import { hashWithPepper } from '../../src/keys/hash.js';
import { resolveKey } from '../../src/keys/resolve.js';
import { emptyDirectory } from '../../src/keys/types.js';
import { MapDirectory, policyFrom } from '../policy/inference-fixture.js';

const RAW = 'sk-live-abc123';
const policy = policyFrom(`
kind: inference-policy
pepper: pep
tiers: { free: {}, pro: {} }
keys:
  - { id: prod, hash: "sha256:${hashWithPepper(RAW, 'pep')}", account: acme, tier: pro, max_tokens: 100, monthly_tokens: 9 }
  - { id: plain, account: acme }
`);

describe('key hashing', () => {
  it('is hex SHA-256 of pepper + raw key; the pepper changes it', () => {
    expect(hashWithPepper('abc', '')).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    expect(hashWithPepper('abc', 'x')).not.toBe(hashWithPepper('abc', ''));
  });
});

describe('resolveKey', () => {
  it('finds a raw key by its peppered hash, and a key id by id', () => {
    const byRaw = resolveKey(RAW, policy, emptyDirectory);
    expect(byRaw).toMatchObject({
      ref: 'k:prod',
      keyId: 'prod',
      account: 'acme',
      tier: 'pro',
      registered: true,
    });
    expect(byRaw.caps).toEqual({ maxTokensPerRequest: 100, monthlyTokens: 9 });
    expect(resolveKey('prod', policy, emptyDirectory).ref).toBe('k:prod');
    expect(resolveKey('plain', policy, emptyDirectory)).toMatchObject({ ref: 'k:plain', tier: 'free' });
  });

  it('unregistered: its hash is its identity and account; hints apply only to it', () => {
    const u = resolveKey('sk-unknown', policy, emptyDirectory);
    const h = `h:${hashWithPepper('sk-unknown', 'pep')}`;
    expect(u).toMatchObject({ ref: h, account: h, tier: 'free', registered: false, disabled: false });
    expect(resolveKey('sk-unknown', policy, emptyDirectory, { account: 'a1', tier: 'pro' })).toMatchObject({
      account: 'a1',
      tier: 'pro',
    });
    // A registered key ignores descriptor hints.
    expect(resolveKey('prod', policy, emptyDirectory, { account: 'evil', tier: 'free' })).toMatchObject({
      account: 'acme',
      tier: 'pro',
    });
    expect(JSON.stringify(u)).not.toContain('sk-unknown');
  });

  it('admin-managed records win field by field; cleared caps go; stored-only keys resolve by hash', () => {
    const dir = new MapDirectory();
    dir.keys.set('prod', {
      id: 'prod',
      tier: 'free',
      caps: { dailySpendMicros: 5 },
      clearedCaps: ['monthlyTokens'],
    });
    expect(resolveKey(RAW, policy, dir)).toMatchObject({
      tier: 'free',
      account: 'acme',
      caps: { maxTokensPerRequest: 100, dailySpendMicros: 5 },
    });
    dir.keys.set('new', {
      id: 'new',
      hash: hashWithPepper('sk-new', 'pep'),
      account: 'globex',
      disabled: true,
    });
    expect(resolveKey('sk-new', policy, dir)).toMatchObject({
      ref: 'k:new',
      account: 'globex',
      tier: 'free',
      disabled: true,
      registered: true,
    });
    // A tier the policy no longer defines falls back to the default tier.
    dir.keys.set('plain', { id: 'plain', tier: 'gone' });
    expect(resolveKey('plain', policy, dir).tier).toBe('free');
  });
});
