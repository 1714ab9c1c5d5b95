import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { RateLimitDescriptorSchema } from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  RateLimitRequestSchema,
  RateLimitResponse_Code,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { parseConfigFiles } from '../../src/config/load.js';
import { RkError } from '../../src/errors.js';
import { emptyDirectory } from '../../src/keys/types.js';
import { createLogger } from '../../src/log.js';
import type { Deps } from '../../src/services/deps.js';
import {
  MAX_DESCRIPTORS,
  MAX_ENTRIES,
  MAX_HITS_ADDEND,
  rlsBinding,
  validate,
} from '../../src/services/rls.js';
import { MemoryStore } from '../../src/store/memory.js';
import { type LimiterStore, StoreUnavailableError } from '../../src/store/store.js';
import { callContext } from '../harness/context.js';

const descriptor = (n: number, entries = 1, hitsAddend?: bigint) =>
  create(RateLimitDescriptorSchema, {
    entries: Array.from({ length: entries }, (_, j) => ({ key: `k${j}`, value: `v${n}` })),
    ...(hitsAddend === undefined ? {} : { hitsAddend }),
  });
const request = (descriptors = [descriptor(0)], hitsAddend = 0) =>
  create(RateLimitRequestSchema, { domain: 'd', descriptors, hitsAddend });

const fieldOf = (f: () => void): string | undefined => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(RkError);
    expect((e as RkError).code).toBe('INVALID_ARGUMENT');
    return (e as RkError).field;
  }
  return undefined;
};

describe('validate: bounds are inclusive', () => {
  it('descriptors', () => {
    const at = (n: number) => Array.from({ length: n }, (_, i) => descriptor(i));
    expect(fieldOf(() => validate(request(at(MAX_DESCRIPTORS))))).toBeUndefined();
    expect(fieldOf(() => validate(request(at(MAX_DESCRIPTORS + 1))))).toBe('descriptors');
  });

  it('entries per descriptor', () => {
    expect(fieldOf(() => validate(request([descriptor(0, MAX_ENTRIES)])))).toBeUndefined();
    expect(fieldOf(() => validate(request([descriptor(0), descriptor(1, MAX_ENTRIES + 1)])))).toBe(
      'descriptors[1].entries',
    );
  });

  it('hits_addend at request and descriptor level', () => {
    expect(fieldOf(() => validate(request([descriptor(0)], MAX_HITS_ADDEND)))).toBeUndefined();
    expect(fieldOf(() => validate(request([descriptor(0)], MAX_HITS_ADDEND + 1)))).toBe('hits_addend');
    expect(fieldOf(() => validate(request([descriptor(0, 1, BigInt(MAX_HITS_ADDEND))])))).toBeUndefined();
    expect(fieldOf(() => validate(request([descriptor(0, 1, BigInt(MAX_HITS_ADDEND) + 1n)])))).toBe(
      'descriptors[0].hits_addend',
    );
    // 0 at descriptor level is "check without counting", not an error.
    expect(fieldOf(() => validate(request([descriptor(0, 1, 0n)])))).toBeUndefined();
  });
});

const ctx = callContext();
const deps = (store: LimiterStore): Deps => {
  const config = parseConfigFiles([
    {
      file: 'd.yaml',
      text: 'domain: d\ndescriptors:\n  - key: k0\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n',
    },
  ]);
  return { store, config: () => config, keys: emptyDirectory, log: createLogger('silent') };
};

describe('ShouldRateLimit handler', () => {
  it('decides a configured generic domain through the store', async () => {
    const rls = rlsBinding(deps(new MemoryStore({ sweepIntervalMs: 0 }))).impl.shouldRateLimit!;
    const codes = [];
    for (let i = 0; i < 3; i++) codes.push((await rls(request(), ctx)).overallCode);
    expect(codes).toEqual([
      RateLimitResponse_Code.OK,
      RateLimitResponse_Code.OK,
      RateLimitResponse_Code.OVER_LIMIT,
    ]);
  });

  it('a store that cannot answer (and no failure-mode wrapper) is UNAVAILABLE, not INTERNAL', async () => {
    const down: LimiterStore = {
      now: () => Date.now(),
      decide: async () => {
        throw new StoreUnavailableError('timeout');
      },
      settle: async () => {
        throw new StoreUnavailableError('timeout');
      },
      release: async () => false,
      healthy: () => false,
      close: async () => {},
    };
    const rls = rlsBinding(deps(down)).impl.shouldRateLimit!;
    await expect(rls(request(), ctx)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});
