/**
 * The hand-written RateLimitRequest decoder against protobuf-es's reflective fromBinary: the same
 * message (fields, absent optionals, decoded strings) for any input it reads, fromBinary (with its
 * errors) for everything else.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { RateLimitUnit } from '../../gen/envoy/type/v3/ratelimit_unit_pb.js';
import {
  decodeRateLimitRequest,
  fastDecoderFor,
  tryDecodeRateLimitRequest,
} from '../../src/transport/fast-decode.js';
import { grpcServiceDefinition } from '../../src/transport/grpc.js';

const bytesOf = (init: Parameters<typeof create<typeof RateLimitRequestSchema>>[1]): Buffer =>
  Buffer.from(toBinary(RateLimitRequestSchema, create(RateLimitRequestSchema, init)));

/** fromBinary's answer, or the error it throws. */
const reference = (b: Buffer): RateLimitRequest | Error => {
  try {
    return fromBinary(RateLimitRequestSchema, b);
  } catch (e) {
    return e as Error;
  }
};

const text = fc.oneof(
  fc.constant(''),
  fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 24 }),
  fc.string({ unit: 'binary', maxLength: 24 }),
  // Lone surrogates: encoded as U+FFFD, decoded back as such by both.
  fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => `a${String.fromCharCode(c)}`),
  fc.string({ unit: 'grapheme-ascii', minLength: 130, maxLength: 300 }),
);
const uint32 = fc.oneof(fc.constantFrom(0, 1, 127, 128, 2 ** 28, 2 ** 32 - 1), fc.nat());
const requests = fc.record({
  domain: text,
  hitsAddend: uint32,
  descriptors: fc.array(
    fc.record({ entries: fc.array(fc.record({ key: text, value: text }), { maxLength: 6 }) }),
    { maxLength: 5 },
  ),
});

describe('RateLimitRequest decoder', () => {
  it('reads what Envoy sends exactly as fromBinary does', () => {
    const b = bytesOf({
      domain: 'inference',
      descriptors: [
        { entries: [{ key: 'key', value: 'sk-live-123' }] },
        {
          entries: [
            { key: 'key', value: 'sk-live-123' },
            { key: 'model', value: 'gpt-4o' },
            { key: 'tokens', value: '512' },
          ],
        },
      ],
      hitsAddend: 3,
    });
    const fast = tryDecodeRateLimitRequest(b);
    expect(fast).toBeDefined();
    // Strict: the same own properties (optional descriptor fields absent), the same prototype.
    expect(fast).toStrictEqual(fromBinary(RateLimitRequestSchema, b));
  });

  it('any request of domain, descriptors and entries: the same message', () => {
    fc.assert(
      fc.property(requests, (init) => {
        const b = bytesOf(init);
        const fast = tryDecodeRateLimitRequest(b);
        expect(fast).toBeDefined();
        expect(fast).toStrictEqual(fromBinary(RateLimitRequestSchema, b));
      }),
      { numRuns: 500 },
    );
  });

  it('invalid UTF-8 goes to fromBinary, which refuses it', () => {
    // domain = 'a' 0xc3 'b' (a lead byte without its continuation byte).
    const b = Buffer.from([0x0a, 0x03, 0x61, 0xc3, 0x62]);
    expect(tryDecodeRateLimitRequest(b)).toBeUndefined();
    expect(() => decodeRateLimitRequest(b)).toThrow(/utf-8/);
  });

  it("leaves a descriptor's limit override or hits_addend, and unknown fields, to fromBinary", () => {
    const cases = [
      bytesOf({
        domain: 'd',
        descriptors: [
          { entries: [{ key: 'k', value: 'v' }], limit: { requestsPerUnit: 5, unit: RateLimitUnit.MINUTE } },
        ],
      }),
      bytesOf({ domain: 'd', descriptors: [{ entries: [{ key: 'k', value: 'v' }], hitsAddend: 7n }] }),
      // Field 9 (varint) of the request, unknown to this schema.
      Buffer.concat([bytesOf({ domain: 'd' }), Buffer.from([0x48, 0x01])]),
    ];
    for (const b of cases) {
      expect(tryDecodeRateLimitRequest(b)).toBeUndefined();
      expect(decodeRateLimitRequest(b)).toStrictEqual(fromBinary(RateLimitRequestSchema, b));
    }
    expect(decodeRateLimitRequest(cases[1]!).descriptors[0]!.hitsAddend).toBe(7n);
  });

  it('any bytes at all: the same message or the same error as fromBinary', () => {
    const valid = requests.map((init) => bytesOf(init));
    // Truncations and single-byte corruptions of valid requests, and noise.
    const mangled = fc.oneof(
      fc.tuple(valid, fc.nat()).map(([b, n]) => b.subarray(0, b.length === 0 ? 0 : n % b.length)),
      fc.tuple(valid, fc.nat(), fc.integer({ min: 0, max: 255 })).map(([b, i, v]) => {
        const c = Buffer.from(b);
        if (c.length > 0) c[i % c.length] = v;
        return c;
      }),
      fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
    );
    fc.assert(
      fc.property(mangled, (b) => {
        const ref = reference(b);
        if (ref instanceof Error) expect(() => decodeRateLimitRequest(b)).toThrow(ref.message);
        else expect(decodeRateLimitRequest(b)).toStrictEqual(ref);
      }),
      { numRuns: 2000 },
    );
  });

  it('serves the RLS request type only, and is what the gRPC service definition decodes with', () => {
    expect(fastDecoderFor(RateLimitRequestSchema)).toBe(decodeRateLimitRequest);
    const rls = RateLimitService.method.shouldRateLimit;
    expect(fastDecoderFor(rls.output)).toBeUndefined();
    const def = grpcServiceDefinition(RateLimitService)['shouldRateLimit']!;
    expect(def.requestDeserialize).toBe(decodeRateLimitRequest);
  });
});
