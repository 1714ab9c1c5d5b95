import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { RateLimitResponse_Code } from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import type { GenericDomain } from '../../src/config/generic.js';
import { parseConfigFiles } from '../../src/config/load.js';
import { RkError } from '../../src/errors.js';
import {
  DEFAULT_GENERIC_HEADERS,
  findRule,
  genericResponse,
  MAX_KEY_BODY,
  planGeneric,
  UNLIMITED_REMAINING,
  windowKey,
} from '../../src/policy/generic.js';
import type { DecisionResult, OpState } from '../../src/store/store.js';
import { type Desc, genericRequest } from './generic-fixture.js';

const domainOf = (text: string): GenericDomain =>
  [...parseConfigFiles([{ file: 't.yaml', text }]).domains.values()][0]!;

const entries = (...kv: [string, string][]) => kv.map(([key, value]) => ({ key, value }));

const ok = (remaining: number, resetMs = 60_000): OpState => ({
  ok: true,
  used: 0,
  remaining,
  resetMs,
  retryMs: 0,
});
const over = (retryMs: number, resetMs = 60_000): OpState => ({
  ok: false,
  used: 0,
  remaining: 0,
  resetMs,
  retryMs,
});
const result = (...states: OpState[]): DecisionResult => ({
  admitted: states.every((s) => s.ok),
  denied: -1,
  states,
  nowMs: 0,
  expiredLeases: 0,
});

// envoyproxy/ratelimit README examples 2-4 and 9, plus defaults under a wildcard.
const messaging = domainOf(`
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: remote_address
    value: 10.*
    rate_limit: {unit: second, requests_per_unit: 1000}
  - key: remote_address
    value: 10.1.*
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: key
    value: value
    rate_limit: {unit: second, requests_per_unit: 300}
  - key: path
    value: /api/*
    descriptors:
      - key: method
        value: GET
        rate_limit: {unit: minute, requests_per_unit: 7}
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 3}
`);

const limitOf = (d: GenericDomain, ...kv: [string, string][]) => {
  const m = findRule(d.root, entries(...kv));
  return m && !m.limit.unlimited ? m.limit.requestsPerUnit : undefined;
};

describe('findRule (envoyproxy/ratelimit matching)', () => {
  it('walks nested descriptors, with a key-only default at the nested level', () => {
    expect(limitOf(messaging, ['message_type', 'marketing'], ['to_number', '2061111111'])).toBe(5);
    expect(limitOf(messaging, ['to_number', '2061111111'])).toBe(100);
    // The nested placeholder has no limit of its own.
    expect(limitOf(messaging, ['message_type', 'marketing'])).toBeUndefined();
    expect(limitOf(messaging, ['message_type', 'transactional'], ['to_number', '1'])).toBeUndefined();
  });

  it('exact key/value beats a wildcard, which beats the key alone; first matching wildcard wins', () => {
    expect(limitOf(messaging, ['remote_address', '50.0.0.5'])).toBe(0);
    expect(limitOf(messaging, ['remote_address', '50.0.0.1'])).toBe(10);
    expect(limitOf(messaging, ['remote_address', '10.2.3.4'])).toBe(1000);
    // `10.*` is configured before `10.1.*`, so it matches first (as in envoyproxy/ratelimit).
    expect(limitOf(messaging, ['remote_address', '10.1.0.1'])).toBe(1000);
  });

  it('applies a rule only at the depth of the request descriptor', () => {
    expect(limitOf(messaging, ['key', 'value'])).toBe(300);
    expect(limitOf(messaging, ['key', 'value'], ['subkey', 'subvalue'])).toBeUndefined();
    expect(limitOf(messaging, ['to_number', '1'], ['extra', 'x'])).toBeUndefined();
  });

  it('descends through a wildcard into nested rules', () => {
    expect(limitOf(messaging, ['path', '/api/users'], ['method', 'GET'])).toBe(7);
    expect(limitOf(messaging, ['path', '/api/users'], ['method', 'POST'])).toBe(3);
    expect(limitOf(messaging, ['path', '/other'], ['method', 'GET'])).toBeUndefined();
    expect(limitOf(messaging, ['path', '/api/users'])).toBeUndefined();
  });

  it('is case-sensitive on keys and values', () => {
    expect(limitOf(messaging, ['Remote_address', '1'])).toBeUndefined();
    expect(limitOf(messaging, ['message_type', 'Marketing'], ['to_number', '1'])).toBeUndefined();
  });
});

describe('windowKey', () => {
  it('names domain, entries and unit inside one hash tag', () => {
    expect(windowKey('edge', entries(['k1', 'v1'], ['k2', 'v2']), 'minute')).toBe(
      'g:{edge|k1=v1|k2=v2}:minute',
    );
  });

  it('escapes separators so distinct descriptors never share a key', () => {
    const a = windowKey('d', entries(['k', 'a|b=c']), 'second');
    const b = windowKey('d', entries(['k', 'a'], ['b', 'c']), 'second');
    expect(a).not.toBe(b);
    expect(a).toBe('g:{d|k=a%7cb%3dc}:second');
    expect(windowKey('d', entries(['k', '}{%']), 'second')).toBe('g:{d|k=%7d%7b%25}:second');
  });

  it('hashes a long body to a bounded key, still distinct', () => {
    const long = 'x'.repeat(10_000);
    const k1 = windowKey('d', entries(['k', long]), 'hour');
    const k2 = windowKey('d', entries(['k', `${long}y`]), 'hour');
    expect(k1.length).toBeLessThan(80);
    expect(k1).toMatch(/^g:\{#[A-Za-z0-9_-]{43}\}:hour$/);
    expect(k1).not.toBe(k2);
    expect(windowKey('d', entries(['k', 'v'.repeat(MAX_KEY_BODY)]), 'hour')).toMatch(/^g:\{#/);
  });
});

describe('planGeneric', () => {
  it('one non-atomic window op per limited descriptor, with its own key, window and cost', () => {
    const plan = planGeneric(
      messaging,
      genericRequest('messaging', [
        { e: [['to_number', '1']] },
        { e: [['nothing', 'here']] },
        { e: [['remote_address', '1.2.3.4']] },
      ]),
    );
    expect(plan.decision.atomic).toBe(false);
    expect(plan.decision.ops).toEqual([
      { kind: 'window', key: 'g:{messaging|to_number=1}:day', limit: 100, windowMs: 86_400_000, cost: 1 },
      {
        kind: 'window',
        key: 'g:{messaging|remote_address=1.2.3.4}:second',
        limit: 10,
        windowMs: 1000,
        cost: 1,
      },
    ]);
    expect(plan.slots.map((s) => s.kind)).toEqual(['limit', 'none', 'limit']);
  });

  it('hits_addend: the descriptor wins (0 = check only), else the request, where 0 means 1', () => {
    const costs = (descs: Desc[], hits: number) =>
      planGeneric(messaging, genericRequest('messaging', descs, hits)).decision.ops.map((o) => o.cost);
    const d = (hits?: number): Desc =>
      hits === undefined ? { e: [['to_number', '1']] } : { e: [['to_number', '1']], hits };
    expect(costs([d()], 0)).toEqual([1]);
    expect(costs([d()], 5)).toEqual([5]);
    expect(costs([d(0)], 5)).toEqual([0]);
    expect(costs([d(3)], 5)).toEqual([3]);
    expect(costs([d(3), d()], 0)).toEqual([3, 1]);
  });

  it('an unknown domain limits nothing, even with overrides', () => {
    const plan = planGeneric(
      undefined,
      genericRequest('nope', [
        { e: [['a', 'b']], limit: { requestsPerUnit: 1, unit: RateLimitUnit.SECOND } },
      ]),
    );
    expect(plan.decision.ops).toEqual([]);
    const res = genericResponse(plan, undefined);
    expect(res).toMatchObject({
      overallCode: RateLimitResponse_Code.OK,
      statuses: [{ code: RateLimitResponse_Code.OK, limitRemaining: 0 }],
    });
    expect(res.statuses[0]!.currentLimit).toBeUndefined();
  });

  it('a descriptor limit override replaces the configured rule, unit included, never shadowed', () => {
    const shadowed = domainOf(
      'domain: s\ndescriptors:\n  - key: u\n    shadow_mode: true\n    rate_limit: {unit: day, requests_per_unit: 1}\n',
    );
    const plan = planGeneric(
      shadowed,
      genericRequest('s', [
        { e: [['u', 'x']], limit: { requestsPerUnit: 42, unit: RateLimitUnit.HOUR } },
        { e: [['u', 'y']] },
      ]),
    );
    expect(plan.decision.ops).toEqual([
      { kind: 'window', key: 'g:{s|u=x}:hour', limit: 42, windowMs: 3_600_000, cost: 1 },
      { kind: 'window', key: 'g:{s|u=y}:day', limit: 1, windowMs: 86_400_000, cost: 1, shadow: true },
    ]);
    // Applies even where no rule matches.
    const free = planGeneric(
      shadowed,
      genericRequest('s', [
        { e: [['other', 'x']], limit: { requestsPerUnit: 2, unit: RateLimitUnit.SECOND } },
      ]),
    );
    expect(free.decision.ops).toHaveLength(1);
    expect(() =>
      planGeneric(
        shadowed,
        genericRequest('s', [{ e: [['u', 'x']], limit: { requestsPerUnit: 2, unit: 0 } }]),
      ),
    ).toThrow(RkError);
  });

  // envoyproxy/ratelimit README example 7.
  const example7 = domainOf(`
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 10
          unit: second
`);

  it('replaces drops the named limit when the replacing rule matches in the same request', () => {
    const d1: Desc = {
      e: [
        ['key_1', 'value_1'],
        ['user', 'bkthomps'],
      ],
    };
    const d2: Desc = {
      e: [
        ['key_2', 'value_2'],
        ['user', 'bkthomps'],
      ],
    };
    expect(planGeneric(example7, genericRequest('example7', [d1])).decision.ops.map((o) => o.limit)).toEqual([
      5,
    ]);
    expect(planGeneric(example7, genericRequest('example7', [d2])).decision.ops.map((o) => o.limit)).toEqual([
      10,
    ]);
    const both = planGeneric(example7, genericRequest('example7', [d1, d2]));
    expect(both.decision.ops.map((o) => o.limit)).toEqual([10]);
    expect(both.slots.map((s) => s.kind)).toEqual(['none', 'limit']);
  });

  it('unlimited descriptors take no op; share_threshold counts all wildcard matches in one window', () => {
    const d = domainOf(`
domain: x
descriptors:
  - key: internal
    rate_limit: {unlimited: true}
  - key: file
    value: reports/*
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 3}
  - key: file
    value: data/*
    rate_limit: {unit: minute, requests_per_unit: 3}
`);
    const plan = planGeneric(
      d,
      genericRequest('x', [
        { e: [['internal', 'batch']] },
        {
          e: [
            ['file', 'reports/a.pdf'],
            ['user', 'u1'],
          ],
        },
        {
          e: [
            ['file', 'reports/b.pdf'],
            ['user', 'u1'],
          ],
        },
        { e: [['file', 'data/a.csv']] },
      ]),
    );
    expect(plan.slots[0]).toEqual({ kind: 'unlimited' });
    expect(plan.decision.ops.map((o) => o.key)).toEqual([
      'g:{x|file=reports/*|user=u1}:minute',
      'g:{x|file=reports/*|user=u1}:minute',
      'g:{x|file=data/a.csv}:minute',
    ]);
  });
});

describe('genericResponse', () => {
  const d = domainOf(`
domain: r
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 10, name: a_limit}
  - key: b
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: s
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: u
    rate_limit: {unlimited: true}
`);

  it('maps states to statuses in request order, like envoyproxy/ratelimit', () => {
    const plan = planGeneric(
      d,
      genericRequest('r', [
        { e: [['a', '1']] },
        { e: [['none', '1']] },
        { e: [['u', '1']] },
        { e: [['b', '1']] },
      ]),
    );
    const res = genericResponse(plan, result(ok(7, 59_001), over(1_500, 1_900)));
    expect(res.overallCode).toBe(RateLimitResponse_Code.OVER_LIMIT);
    expect(res.responseHeadersToAdd).toEqual([]);
    const [a, none, u, b] = res.statuses;
    expect(a).toMatchObject({
      code: RateLimitResponse_Code.OK,
      currentLimit: { requestsPerUnit: 10, unit: 2, name: 'a_limit' },
      limitRemaining: 7,
      durationUntilReset: { seconds: 60n, nanos: 0 },
    });
    expect(none).toMatchObject({ code: RateLimitResponse_Code.OK, limitRemaining: 0 });
    expect(none!.currentLimit).toBeUndefined();
    expect(none!.durationUntilReset).toBeUndefined();
    expect(u).toMatchObject({ code: RateLimitResponse_Code.OK, limitRemaining: UNLIMITED_REMAINING });
    expect(u!.currentLimit).toBeUndefined();
    // OVER_LIMIT: the time until this request would be admitted, rounded up to whole seconds.
    expect(b).toMatchObject({
      code: RateLimitResponse_Code.OVER_LIMIT,
      currentLimit: { requestsPerUnit: 2, unit: 1, name: '' },
      limitRemaining: 0,
      durationUntilReset: { seconds: 2n },
    });
  });

  it('a cost above the limit never fits: it reports the full reset time', () => {
    const plan = planGeneric(d, genericRequest('r', [{ e: [['b', '1']], hits: 5 }]));
    const res = genericResponse(plan, result(over(-1, 800)));
    expect(res.statuses[0]).toMatchObject({
      code: RateLimitResponse_Code.OVER_LIMIT,
      durationUntilReset: { seconds: 1n },
    });
  });

  it('shadow mode over its limit answers OK with limit_remaining 0 and leaves the overall code OK', () => {
    const plan = planGeneric(d, genericRequest('r', [{ e: [['s', '1']] }, { e: [['a', '1']] }]));
    const res = genericResponse(plan, result(over(3_000_000), ok(9)));
    expect(res.overallCode).toBe(RateLimitResponse_Code.OK);
    expect(res.statuses[0]).toMatchObject({
      code: RateLimitResponse_Code.OK,
      limitRemaining: 0,
      currentLimit: { requestsPerUnit: 1 },
    });
  });

  it('adds the binding limit as headers only when asked', () => {
    const plan = planGeneric(d, genericRequest('r', [{ e: [['a', '1']] }, { e: [['b', '1']] }]));
    const headers = (r: ReturnType<typeof genericResponse>) =>
      Object.fromEntries(r.responseHeadersToAdd.map((h) => [h.key, h.value]));
    // OK: the least remaining binds.
    expect(
      headers(genericResponse(plan, result(ok(7, 30_000), ok(1, 500)), DEFAULT_GENERIC_HEADERS)),
    ).toEqual({
      'RateLimit-Limit': '2',
      'RateLimit-Remaining': '1',
      'RateLimit-Reset': '1',
    });
    // Over: the descriptor over its limit binds.
    expect(headers(genericResponse(plan, result(over(10_000), ok(0, 900)), DEFAULT_GENERIC_HEADERS))).toEqual(
      {
        'RateLimit-Limit': '10',
        'RateLimit-Remaining': '0',
        'RateLimit-Reset': '10',
      },
    );
    const none = planGeneric(d, genericRequest('r', [{ e: [['none', '1']] }]));
    expect(genericResponse(none, undefined, DEFAULT_GENERIC_HEADERS).responseHeadersToAdd).toEqual([]);
  });
});

describe('findRule agrees with a direct transcription of envoyproxy/ratelimit GetLimit', () => {
  interface Node {
    key: string;
    value?: string;
    rate_limit?: { unit: 'second'; requests_per_unit: number };
    descriptors?: Node[];
  }
  // Its own data model: `key` or `key_value` maps per level, wildcard keys kept on the parent.
  interface GoLevel {
    map: Map<string, GoNode>;
    wildcardKeys: string[];
  }
  interface GoNode extends GoLevel {
    limit?: number;
  }
  const goLevel = (nodes: Node[] = []): GoLevel => {
    const level: GoLevel = { map: new Map(), wildcardKeys: [] };
    for (const n of nodes) {
      const finalKey = n.value ? `${n.key}_${n.value}` : n.key;
      const child = goLevel(n.descriptors);
      level.map.set(finalKey, {
        ...child,
        ...(n.rate_limit ? { limit: n.rate_limit.requests_per_unit } : {}),
      });
      if (finalKey.endsWith('*')) level.wildcardKeys.push(finalKey);
    }
    return level;
  };
  const goGetLimit = (root: GoLevel, entries: [string, string][]): number | undefined => {
    let map = root.map;
    let prev: GoLevel = root;
    let limit: number | undefined;
    for (let i = 0; i < entries.length; i++) {
      const [key, value] = entries[i]!;
      let finalKey = `${key}_${value}`;
      let next = map.get(finalKey);
      if (!next) {
        for (const wk of prev.wildcardKeys) {
          if (finalKey.startsWith(wk.slice(0, -1))) {
            next = map.get(wk);
            break;
          }
        }
      }
      if (!next) {
        finalKey = key;
        next = map.get(finalKey);
      }
      if (next?.limit !== undefined && i === entries.length - 1) limit = next.limit;
      if (next && next.map.size > 0) map = next.map;
      else break;
      prev = next;
    }
    return limit;
  };

  let id = 0;
  const keys = fc.constantFrom('a', 'b', 'c');
  const node = (depth: number): fc.Arbitrary<Node> =>
    fc
      .record({
        key: keys,
        value: fc.option(fc.constantFrom('x', 'y', 'x*', 'xy*', '*'), { nil: undefined }),
        limited: fc.boolean(),
        children: depth > 0 ? fc.array(node(depth - 1), { maxLength: 3 }) : fc.constant<Node[]>([]),
      })
      .map(
        ({ key, value, limited, children }): Node => ({
          key,
          ...(value === undefined ? {} : { value }),
          ...(limited ? { rate_limit: { unit: 'second' as const, requests_per_unit: ++id } } : {}),
          ...(children.length > 0 ? { descriptors: children } : {}),
        }),
      );
  // Both sides reject duplicates at a level (the Go loader panics), so generate without them.
  const dedupe = (nodes: Node[]): Node[] => {
    const seen = new Set<string>();
    return nodes
      .filter((n) => {
        const k = `${n.key}\u0000${n.value ?? ''}`;
        if (seen.has(k)) return false;
        seen.add(k);
        return true;
      })
      .map((n) => (n.descriptors ? { ...n, descriptors: dedupe(n.descriptors) } : n));
  };
  const request = fc.array(fc.tuple(keys, fc.constantFrom('x', 'xy', 'xyz', 'y', 'z')), {
    minLength: 1,
    maxLength: 4,
  });

  it('on random trees and requests', () => {
    fc.assert(
      fc.property(
        fc.array(node(3), { maxLength: 6 }),
        fc.array(request, { minLength: 1, maxLength: 10 }),
        (raw, reqs) => {
          const descriptors = dedupe(raw);
          const domain = domainOf(YAML.stringify({ domain: 'p', descriptors }));
          const go = goLevel(descriptors);
          for (const r of reqs) {
            const m = findRule(domain.root, entries(...r));
            const ours = m && !m.limit.unlimited ? m.limit.requestsPerUnit : undefined;
            expect(ours).toBe(goGetLimit(go, r));
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
