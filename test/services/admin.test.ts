import { timestampMs } from '@bufbuild/protobuf/wkt';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { AdminService } from '../../gen/ratekeeper/v1/admin_pb.js';
import { FlagState } from '../../gen/ratekeeper/v1/report_pb.js';
import { UsageService } from '../../gen/ratekeeper/v1/usage_pb.js';
import { type RpcClient, RpcError } from '../../src/cli/client.js';
import { hashWithPepper } from '../../src/keys/hash.js';
import { MemoryKeyRegistry } from '../../src/keys/registry.js';
import { MemoryReportStore } from '../../src/report/memory.js';
import type { FlagInput } from '../../src/report/types.js';
import { decideInference } from '../../src/services/rls-inference.js';
import { body, headers, rlsRequest } from '../policy/inference-fixture.js';
import {
  ADMIN_TOKEN,
  type AdminServer,
  OTHER_TOKEN,
  PEPPER,
  rpcClient,
  startAdminServer,
} from './admin-server.js';

const code = async (p: Promise<unknown>): Promise<RpcError> => {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RpcError);
  return err as RpcError;
};

let server: AdminServer;
let registry: MemoryKeyRegistry;
let flags: MemoryReportStore;
let admin: RpcClient<typeof AdminService>;

beforeEach(async () => {
  registry = new MemoryKeyRegistry();
  flags = new MemoryReportStore();
  server = await startAdminServer({ registry, flags });
  admin = rpcClient(AdminService, server.conn());
  return async () => {
    admin.close();
    await server.stop();
  };
});

describe('AdminService authentication', () => {
  it('refuses a missing, wrong or malformed bearer token with UNAUTHENTICATED on every method', async () => {
    for (const token of ['', 'not-a-known-token-at-all', `${ADMIN_TOKEN}x`]) {
      const c = rpcClient(AdminService, server.conn(token));
      const err = await code(c.getKey({ id: 'static-1' }));
      expect(err.code).toBe(status.UNAUTHENTICATED);
      expect((await code(c.createKey({ account: 'a' }))).code).toBe(status.UNAUTHENTICATED);
      expect((await code(c.listAudit({}))).code).toBe(status.UNAUTHENTICATED);
      c.close();
    }
    expect(await registry.all()).toEqual([]);
    const c = rpcClient(AdminService, { ...server.conn(), token: undefined });
    expect((await code(c.listKeys({}))).message).toContain('missing authorization');
    c.close();
  });

  it('accepts every configured token and records its name as the actor', async () => {
    const bob = rpcClient(AdminService, server.conn(OTHER_TOKEN));
    await bob.createKey({ id: 'by-bob' });
    await admin.disableKey({ id: 'by-bob', reason: 'test' });
    bob.close();
    const audit = await admin.listAudit({ target: 'by-bob' });
    expect(audit.entries.map((e) => `${e.actor}:${e.action}`)).toEqual(['alice:disable', 'bob:create']);
  });
});

describe('AdminService keys', () => {
  it('CreateKey returns the raw key once and stores only its peppered hash', async () => {
    const res = await admin.createKey({
      account: 'acme',
      tier: 'pro',
      name: 'ci',
      caps: { monthlyTokens: 1000n },
    });
    expect(res.rawKey).toMatch(/^rk_[A-Za-z0-9_-]{43}$/);
    const key = res.key!;
    expect(key.id).toMatch(/^key_[0-9a-f]{20}$/);
    expect(key).toMatchObject({ account: 'acme', tier: 'pro', name: 'ci', disabled: false });
    expect(key.caps?.monthlyTokens).toBe(1000n);
    const hash = hashWithPepper(res.rawKey, PEPPER);
    expect(key.hashPrefix).toBe(hash.slice(0, 12));
    expect(registry.byHash(hash)?.id).toBe(key.id);
    const everything = JSON.stringify([
      await registry.all(),
      await registry.listAudit({ pageSize: 0, pageToken: '' }),
    ]);
    expect(everything).not.toContain(res.rawKey);
    expect(everything).not.toContain(res.rawKey.slice(3));
    const again = await admin.getKey({ id: key.id });
    expect(again.sources).toMatchObject({ account: 'store', tier: 'store', 'caps.monthly_tokens': 'store' });
    expect(again.createdAt).toBeDefined();
    const other = await admin.createKey({});
    expect(other.rawKey).not.toBe(res.rawKey);
  });

  it('CreateKey validates: unknown tier, negative caps, bad or taken ids', async () => {
    let err = await code(admin.createKey({ tier: 'gold' }));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.message).toMatch(/^tier: unknown tier "gold"/);
    err = await code(admin.createKey({ caps: { dailySpendMicros: -1n } }));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.message).toMatch(/^caps\.daily_spend_micros: must be >= 0/);
    err = await code(admin.createKey({ id: 'has space' }));
    expect(err.message).toMatch(/^id: /);
    expect((await code(admin.createKey({ account: '{tag}' }))).message).toMatch(/^account: /);
    expect((await code(admin.createKey({ name: 'n'.repeat(300) }))).message).toMatch(/^name: /);
    expect((await code(admin.disableKey({ id: 'static-1', reason: 'r'.repeat(300) }))).message).toMatch(
      /^reason: /,
    );
    expect((await code(admin.createKey({ id: 'static-1' }))).code).toBe(status.ALREADY_EXISTS);
    await admin.createKey({ id: 'mine' });
    expect((await code(admin.createKey({ id: 'mine' }))).code).toBe(status.ALREADY_EXISTS);
    expect((await registry.all()).map((k) => k.id)).toEqual(['mine']);
  });

  it('GetKey merges the policy file and the store; the store wins and sources say where each value is from', async () => {
    const before = await admin.getKey({ id: 'static-1' });
    expect(before).toMatchObject({ account: 'acme', tier: 'free', name: 'from the file', disabled: false });
    expect(before.caps?.monthlyTokens).toBe(5000n);
    expect(before.sources).toEqual({
      account: 'policy',
      tier: 'policy',
      name: 'policy',
      disabled: 'policy',
      'caps.monthly_tokens': 'policy',
      'caps.max_tokens_per_request': 'policy',
    });
    const after = await admin.updateKey({
      id: 'static-1',
      tier: 'pro',
      caps: { monthlySpendMicros: 2_500_000n },
      clearCaps: ['max_tokens_per_request'],
    });
    expect(after.tier).toBe('pro');
    expect(after.caps?.maxTokensPerRequest).toBeUndefined();
    expect(after.caps?.monthlyTokens).toBe(5000n);
    expect(after.caps?.monthlySpendMicros).toBe(2_500_000n);
    expect(after.sources).toMatchObject({
      account: 'policy',
      tier: 'store',
      'caps.monthly_tokens': 'policy',
      'caps.monthly_spend_micros': 'store',
      'caps.max_tokens_per_request': 'store',
    });
    expect(await admin.getKey({ id: 'static-1' })).toEqual(after);
    // The stored overlay holds only what the operator changed.
    expect(registry.byId('static-1')).toMatchObject({
      id: 'static-1',
      tier: 'pro',
      caps: { monthlySpendMicros: 2_500_000 },
      clearedCaps: ['maxTokensPerRequest'],
    });
    expect(registry.byId('static-1')?.account).toBeUndefined();
  });

  it('UpdateKey: unknown key NOT_FOUND; bad input INVALID_ARGUMENT naming the field, and nothing is applied', async () => {
    await admin.createKey({ id: 'k', tier: 'free', caps: { monthlyTokens: 10n } });
    const v = registry.version;
    expect((await code(admin.updateKey({ id: 'nope', tier: 'pro' }))).code).toBe(status.NOT_FOUND);
    const cases: [Parameters<typeof admin.updateKey>[0], RegExp][] = [
      [{ id: '' }, /^id: required/],
      [{ id: 'k' }, /^caps: nothing to update/],
      [{ id: 'k', tier: 'pro', caps: { monthlyTokens: -5n } }, /^caps\.monthly_tokens: must be >= 0/],
      [{ id: 'k', tier: 'gold' }, /^tier: unknown tier/],
      [{ id: 'k', account: '' }, /^account: letters/],
      [{ id: 'k', account: 'a{b}' }, /^account: letters/],
      [{ id: 'k', name: 'x'.repeat(257) }, /^name: at most 256/],
      [
        { id: 'k', tier: 'pro', clearCaps: ['monthly_tokens', 'bogus'] },
        /^clear_caps\[1\]: unknown cap "bogus"/,
      ],
      [
        { id: 'k', caps: { monthlyTokens: 5n }, clearCaps: ['monthly_tokens'] },
        /^clear_caps\[0\]: .*also set/,
      ],
    ];
    for (const [req, msg] of cases) {
      const err = await code(admin.updateKey(req));
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.message).toMatch(msg);
    }
    expect(registry.version).toBe(v);
    const k = await admin.getKey({ id: 'k' });
    expect(k.tier).toBe('free');
    expect(k.caps?.monthlyTokens).toBe(10n);
  });

  it('Disable, Enable and Delete; a policy-file key cannot be deleted, only overridden', async () => {
    await admin.createKey({ id: 'k' });
    const off = await admin.disableKey({ id: 'k', reason: 'card declined' });
    expect(off).toMatchObject({ disabled: true, disabledReason: 'card declined' });
    const on = await admin.enableKey({ id: 'k' });
    expect(on).toMatchObject({ disabled: false, disabledReason: '' });
    expect((await code(admin.disableKey({ id: 'ghost' }))).code).toBe(status.NOT_FOUND);
    expect((await code(admin.enableKey({ id: 'ghost' }))).code).toBe(status.NOT_FOUND);

    const staticOff = await admin.disableKey({ id: 'static-1' });
    expect(staticOff.sources['disabled']).toBe('store');
    const err = await code(admin.deleteKey({ id: 'static-1' }));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    await admin.enableKey({ id: 'static-1' });

    await admin.deleteKey({ id: 'k' });
    expect((await code(admin.getKey({ id: 'k' }))).code).toBe(status.NOT_FOUND);
    expect((await code(admin.deleteKey({ id: 'k' }))).code).toBe(status.NOT_FOUND);
    expect((await code(admin.deleteKey({ id: '' }))).code).toBe(status.INVALID_ARGUMENT);
  });

  it('ListKeys pages over policy and stored keys together, filtered by account', async () => {
    for (const id of ['a1', 'a2', 'b1', 'b2', 'b3'])
      await admin.createKey({ id, account: id[0] === 'a' ? 'acme' : 'beta' });
    const ids: string[] = [];
    let pageToken = '';
    do {
      const page = await admin.listKeys({ pageSize: 2, pageToken });
      ids.push(...page.keys.map((k) => k.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(ids).toEqual(['a1', 'a2', 'b1', 'b2', 'b3', 'static-1']);
    const acme = await admin.listKeys({ account: 'acme' });
    expect(acme.keys.map((k) => k.id)).toEqual(['a1', 'a2', 'static-1']);
    expect((await code(admin.listKeys({ pageSize: -1 }))).message).toMatch(/^page_size/);
    expect((await code(admin.listKeys({ pageToken: '%%' }))).message).toMatch(/^page_token/);
  });

  it('ListAudit shows who changed what, with the record before and after as JSON', async () => {
    await admin.createKey({ id: 'k', tier: 'free' });
    await admin.updateKey({ id: 'k', tier: 'pro' });
    await admin.deleteKey({ id: 'k' });
    const { entries } = await admin.listAudit({ target: 'k' });
    expect(entries.map((e) => e.action)).toEqual(['delete', 'update', 'create']);
    const [del, upd, crt] = entries;
    expect(JSON.parse(upd!.beforeJson)).toMatchObject({ tier: 'free' });
    expect(JSON.parse(upd!.afterJson)).toMatchObject({ tier: 'pro' });
    expect(crt!.beforeJson).toBe('');
    expect(del!.afterJson).toBe('');
    expect(entries.every((e) => e.actor === 'alice' && e.at !== undefined)).toBe(true);
  });

  /** Raises a flag of account acme over a minute's evidence. */
  const raise = (f: Pick<FlagInput, 'key' | 'signal' | 'observed' | 'threshold' | 'atMs'>) =>
    flags.raiseFlag({ ...f, account: 'acme', windowMs: 60_000, detail: 'x', sinceMs: 0 });

  it('ReviewFlag reviews a flag in the report store and audits it', async () => {
    const raised = await raise({ key: 'k', signal: 'retry_storm', observed: 50, threshold: 20, atMs: 1_000 });
    const id = raised.flag!.id;
    const f = await admin.reviewFlag({ flagId: id, state: FlagState.DISMISSED, note: 'known client bug' });
    expect(f).toMatchObject({
      id,
      state: FlagState.DISMISSED,
      note: 'known client bug',
      reviewedBy: 'alice',
    });
    const audit = await admin.listAudit({ target: id });
    expect(audit.entries[0]).toMatchObject({ action: 'review_flag', actor: 'alice' });
    expect(JSON.parse(audit.entries[0]!.afterJson)).toMatchObject({ state: 'dismissed' });
    expect((await code(admin.reviewFlag({ flagId: id, state: FlagState.OPEN }))).message).toMatch(/^state:/);
    expect((await code(admin.reviewFlag({ flagId: 'nope', state: FlagState.REVIEWED }))).code).toBe(
      status.NOT_FOUND,
    );
    expect((await code(admin.reviewFlag({ flagId: '', state: FlagState.REVIEWED }))).message).toMatch(
      /^flag_id/,
    );
  });

  it('ReviewFlag sends a flag raised at a fractional millisecond with whole-ms times, as ListFlags does', async () => {
    const raised = await raise({
      key: 'k-frac',
      signal: 'runaway_requests',
      observed: 3,
      threshold: 2,
      atMs: 1_234.5678,
    });
    const f = await admin.reviewFlag({ flagId: raised.flag!.id, state: FlagState.REVIEWED });
    expect(f.firstSeen && timestampMs(f.firstSeen)).toBe(1_234);
    expect(f.lastSeen && timestampMs(f.lastSeen)).toBe(1_234);
  });
});

describe('AdminService without a report store', () => {
  let bare: AdminServer;
  beforeAll(async () => {
    bare = await startAdminServer({ registry: new MemoryKeyRegistry() });
  });
  afterAll(() => bare.stop());

  it('answers ReviewFlag with UNIMPLEMENTED', async () => {
    const c = rpcClient(AdminService, bare.conn());
    expect((await code(c.reviewFlag({ flagId: 'f', state: FlagState.REVIEWED }))).code).toBe(
      status.UNIMPLEMENTED,
    );
    c.close();
  });
});

describe('key lifecycle against the inference decision', () => {
  it('create → use → disable (402 KEY_DISABLED, in-flight debit still counts) → enable', async () => {
    const usage = rpcClient(UsageService, server.conn());
    const { rawKey, key } = await admin.createKey({ account: 'acme', caps: { monthlyTokens: 100_000n } });
    const ask = (requestId: string) =>
      decideInference(
        rlsRequest([{ key: rawKey, model: 'm1', tokens: 50, request_id: requestId }]),
        server.deps,
      );

    const first = await ask('r1');
    expect(first.overallCode).toBe(RateLimitResponse_Code.OK);

    await admin.disableKey({ id: key!.id, reason: 'chargeback' });
    const denied = await ask('r2');
    expect(denied.overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
    expect(headers(denied)['x-ratelimit-denied']).toBe('KEY_DISABLED');
    expect(body(denied).error.code).toBe('KEY_DISABLED');

    // r1 was admitted before the disable: its debit settles normally.
    const d = await usage.debit({ requestId: 'r1', key: rawKey, model: 'm1', tokensIn: 30n, tokensOut: 20n });
    expect(d.duplicate).toBe(false);
    expect(d.admitted).toBe(true);
    expect(d.spendMicros).toBe(70n);
    const monthly = d.limits.find((l) => l.metric === 'monthly_tokens');
    expect(monthly?.used).toBe(50n);

    await admin.enableKey({ id: key!.id });
    expect((await ask('r3')).overallCode).toBe(RateLimitResponse_Code.OK);
    usage.close();
  });

  it('a lowered cap applies at the next request', async () => {
    const { rawKey, key } = await admin.createKey({ caps: { maxTokensPerRequest: 1000n } });
    const ask = () =>
      decideInference(rlsRequest([{ key: rawKey, model: 'm1', tokens_out: 500 }]), server.deps);
    expect((await ask()).overallCode).toBe(RateLimitResponse_Code.OK);
    await admin.updateKey({ id: key!.id, caps: { maxTokensPerRequest: 100n } });
    const res = await ask();
    expect(body(res).error.code).toBe('MAX_TOKENS_LIMIT_EXCEEDED');
    await admin.updateKey({ id: key!.id, clearCaps: ['max_tokens_per_request'] });
    expect((await ask()).overallCode).toBe(RateLimitResponse_Code.OK);
  });
});
