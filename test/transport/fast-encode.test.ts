/**
 * The hand-written RateLimitResponse encoder against protobuf-es's reflective toBinary: the same bytes
 * for any message, the hand-written path taken whenever the message has only the fields it writes, and
 * toBinary (with its errors) for everything else.
 */
import {
  create,
  type DescMessage,
  equals,
  fromBinary,
  type Message,
  type MessageInitShape,
  toBinary,
  type UnknownField,
} from '@bufbuild/protobuf';
import { WireType } from '@bufbuild/protobuf/wire';
import { DurationSchema, TimestampSchema } from '@bufbuild/protobuf/wkt';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type HeaderValue, HeaderValueSchema } from '../../gen/envoy/config/core/v3/base_pb.js';
import {
  type RateLimitResponse,
  RateLimitResponse_Code,
  type RateLimitResponse_DescriptorStatus,
  RateLimitResponse_DescriptorStatusSchema,
  RateLimitResponse_QuotaSchema,
  RateLimitResponse_RateLimit_Unit,
  RateLimitResponse_RateLimitSchema,
  RateLimitResponseSchema,
  RateLimitService,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';
import {
  encodeRateLimitResponse,
  fastEncoderFor,
  tryEncodeRateLimitResponse,
} from '../../src/transport/fast-encode.js';
import { grpcServiceDefinition } from '../../src/transport/grpc.js';

const reference = (msg: RateLimitResponse): Buffer => Buffer.from(toBinary(RateLimitResponseSchema, msg));

// --- arbitraries

const rarely = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.oneof({ arbitrary: fc.constant(undefined), weight: 60 }, { arbitrary: arb, weight: 1 });

const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
/** Known values, and unknown numbers (proto3 enums are open; negatives take 10 bytes). */
const enumValue = (max: number) => fc.oneof(fc.integer({ min: 0, max }), int32);
const uint32 = fc.oneof(
  fc.constantFrom(0, 1, 127, 128, 16_383, 16_384, 2 ** 21, 2 ** 28 - 1, 2 ** 28, 2 ** 32 - 1),
  fc.integer({ min: 0, max: 2 ** 32 - 1 }),
);
const int64 = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    127n,
    128n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 53n + 1n,
    -1n,
    -(2n ** 63n),
    2n ** 63n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 400n * 86_400n }),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
);
const bytes = fc.oneof(fc.uint8Array({ maxLength: 12 }), fc.uint8Array({ minLength: 120, maxLength: 300 }));

/** Whole code points: ASCII, 2/3/4-byte UTF-8 (astral included), any plane. */
const codePoint = fc.oneof(
  fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }),
  fc.constantFrom('é', 'ß', '€', '限', '😀', '𝄞'),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
);
/** Also lone surrogates, which UTF-8 encoders write as U+FFFD and which cannot round-trip. */
const codeUnit = fc.oneof(
  codePoint,
  fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)),
);
/** Empty, short, and long enough (>= 128 bytes) for two-byte lengths in the field and its message. */
const textOf = (unit: fc.Arbitrary<string>) =>
  fc.oneof(
    fc.constant(''),
    fc.string({ unit, maxLength: 24 }),
    fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 40 }),
    fc.string({ unit, minLength: 100, maxLength: 200 }),
  );

const unknownFields = fc.constant<UnknownField[]>([
  { no: 1000, wireType: WireType.Varint, data: Uint8Array.of(1) },
]);

/** Random RateLimitResponses, fields only toBinary writes included now and then. */
const responseOf = (text: fc.Arbitrary<string>): fc.Arbitrary<RateLimitResponse> => {
  const withUnknown = <M extends Message>(m: M, unknown: M['$unknown']): M => {
    if (unknown) m.$unknown = unknown;
    return m;
  };
  const quota = fc
    .record({
      requests: uint32,
      id: text,
      validUntil: fc.option(fc.record({ seconds: int64, nanos: int32 }), { nil: undefined }),
    })
    .map(({ validUntil, ...q }) =>
      create(RateLimitResponse_QuotaSchema, {
        ...q,
        ...(validUntil
          ? { expirationSpecifier: { case: 'validUntil', value: create(TimestampSchema, validUntil) } }
          : {}),
      }),
    );
  const limit = fc
    .record({
      name: text,
      requestsPerUnit: uint32,
      unit: enumValue(RateLimitResponse_RateLimit_Unit.YEAR),
      unknown: rarely(unknownFields),
    })
    .map(({ unknown, ...l }) => withUnknown(create(RateLimitResponse_RateLimitSchema, l), unknown));
  const duration = fc
    .record({
      seconds: int64,
      nanos: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 999_999_999 }), int32),
    })
    .chain((d) => rarely(unknownFields).map((unknown) => withUnknown(create(DurationSchema, d), unknown)));
  const status = fc
    .record(
      {
        code: enumValue(RateLimitResponse_Code.OVER_LIMIT),
        currentLimit: fc.oneof(limit, fc.constant(create(RateLimitResponse_RateLimitSchema))),
        limitRemaining: uint32,
        durationUntilReset: fc.oneof(duration, fc.constant(create(DurationSchema))),
        quota: rarely(quota),
        unknown: rarely(unknownFields),
      },
      { requiredKeys: ['code', 'limitRemaining'] },
    )
    .map(({ unknown, ...s }) => withUnknown(create(RateLimitResponse_DescriptorStatusSchema, s), unknown));
  const header = fc
    .record({ key: text, value: text, rawValue: fc.oneof(fc.constant(new Uint8Array()), bytes) })
    .chain((h) => rarely(unknownFields).map((unknown) => withUnknown(create(HeaderValueSchema, h), unknown)));
  return fc
    .record(
      {
        overallCode: enumValue(RateLimitResponse_Code.OVER_LIMIT),
        statuses: fc.array(status, { maxLength: 4 }),
        responseHeadersToAdd: fc.array(header, { maxLength: 14 }),
        requestHeadersToAdd: fc.array(header, { maxLength: 3 }),
        rawBody: fc.oneof(fc.constant(new Uint8Array()), bytes),
        dynamicMetadata: rarely(
          fc.dictionary(
            fc.string(),
            fc.oneof(fc.string(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean()),
          ),
        ),
        quota: rarely(quota),
        unknown: rarely(unknownFields),
      },
      { requiredKeys: ['overallCode', 'statuses', 'responseHeadersToAdd', 'requestHeadersToAdd'] },
    )
    .map(({ unknown, ...r }) => withUnknown(create(RateLimitResponseSchema, r), unknown));
};

/** Whether the message has something only toBinary writes: the encoder must hand it over. */
const needsToBinary = (msg: RateLimitResponse): boolean => {
  const unknown = (m: Message | undefined) => (m?.$unknown?.length ?? 0) > 0;
  const header = (h: HeaderValue) => unknown(h);
  const status = (s: RateLimitResponse_DescriptorStatus) =>
    unknown(s) || unknown(s.currentLimit) || unknown(s.durationUntilReset) || s.quota !== undefined;
  return (
    unknown(msg) ||
    msg.dynamicMetadata !== undefined ||
    msg.quota !== undefined ||
    msg.statuses.some(status) ||
    msg.responseHeadersToAdd.some(header) ||
    msg.requestHeadersToAdd.some(header)
  );
};

// --- tests

describe('encodeRateLimitResponse', () => {
  it('writes the bytes toBinary writes, by hand unless the message needs toBinary', () => {
    let handWritten = 0;
    fc.assert(
      fc.property(responseOf(textOf(codeUnit)), (msg) => {
        const fast = tryEncodeRateLimitResponse(msg);
        expect(fast === undefined).toBe(needsToBinary(msg));
        if (fast) handWritten++;
        expect(encodeRateLimitResponse(msg).toString('hex')).toBe(reference(msg).toString('hex'));
      }),
      { numRuns: 2000 },
    );
    // The generator must mostly exercise the hand-written path, not toBinary.
    expect(handWritten).toBeGreaterThan(1000);
  });

  it('round-trips through fromBinary', () => {
    fc.assert(
      fc.property(responseOf(textOf(codePoint)), (msg) => {
        const out = encodeRateLimitResponse(msg);
        const back = fromBinary(RateLimitResponseSchema, out);
        expect(equals(RateLimitResponseSchema, back, msg)).toBe(true);
        // equals() leaves unknown fields out; the bytes do not.
        expect(Buffer.from(toBinary(RateLimitResponseSchema, back)).equals(out)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('writes nothing for the empty message', () => {
    const msg = create(RateLimitResponseSchema);
    expect(tryEncodeRateLimitResponse(msg)).toEqual(Buffer.alloc(0));
    expect(encodeRateLimitResponse(msg)).toEqual(reference(msg));
  });

  it('writes a typical inference response by hand', () => {
    const header = (key: string, value: string) => create(HeaderValueSchema, { key, value });
    const msg = create(RateLimitResponseSchema, {
      overallCode: RateLimitResponse_Code.OVER_LIMIT,
      statuses: [
        create(RateLimitResponse_DescriptorStatusSchema, {
          code: RateLimitResponse_Code.OVER_LIMIT,
          currentLimit: create(RateLimitResponse_RateLimitSchema, {
            name: 'key:requests/min',
            requestsPerUnit: 600,
            unit: RateLimitResponse_RateLimit_Unit.MINUTE,
          }),
          durationUntilReset: create(DurationSchema, { seconds: 41n, nanos: 250_000_000 }),
        }),
      ],
      responseHeadersToAdd: [header('x-ratelimit-limit-requests', '600'), header('retry-after', '42')],
      requestHeadersToAdd: [header('x-ratekeeper-account', 'acct_1')],
      rawBody: new TextEncoder().encode('{"error":{"type":"rate_limit_error"}}'),
    });
    expect(tryEncodeRateLimitResponse(msg)?.toString('hex')).toBe(reference(msg).toString('hex'));
  });

  it('leaves dynamic_metadata, quota and unknown fields to toBinary', () => {
    const quota = create(RateLimitResponse_QuotaSchema, { requests: 5, id: 'q' });
    const status = (init: MessageInitShape<typeof RateLimitResponse_DescriptorStatusSchema>) =>
      create(RateLimitResponse_DescriptorStatusSchema, { code: RateLimitResponse_Code.OK, ...init });
    const cases = [
      create(RateLimitResponseSchema, { overallCode: 1, dynamicMetadata: { a: 1, b: 'x' } }),
      create(RateLimitResponseSchema, { overallCode: 1, dynamicMetadata: {} }),
      create(RateLimitResponseSchema, { overallCode: 1, quota }),
      create(RateLimitResponseSchema, { statuses: [status({ quota })] }),
      create(RateLimitResponseSchema, {
        statuses: [status({ currentLimit: create(RateLimitResponse_RateLimitSchema, { name: 'n' }) })],
      }),
    ];
    cases[4]!.statuses[0]!.currentLimit!.$unknown = [
      { no: 9, wireType: WireType.LengthDelimited, data: Uint8Array.of(1, 0x41) },
    ];
    for (const msg of cases) {
      expect(tryEncodeRateLimitResponse(msg)).toBeUndefined();
      expect(encodeRateLimitResponse(msg)).toEqual(reference(msg));
    }
  });

  it('fails as toBinary does on values toBinary rejects', () => {
    const bad: [string, (m: RateLimitResponse) => void][] = [
      [
        'negative uint32',
        (m) => {
          m.statuses[0]!.limitRemaining = -1;
        },
      ],
      [
        'uint32 over 2^32-1',
        (m) => {
          m.statuses[0]!.limitRemaining = 2 ** 32;
        },
      ],
      [
        'fractional enum',
        (m) => {
          m.overallCode = 1.5 as RateLimitResponse_Code;
        },
      ],
      [
        'int64 out of range',
        (m) => {
          m.statuses[0]!.durationUntilReset!.seconds = 2n ** 63n;
        },
      ],
    ];
    for (const [what, spoil] of bad) {
      const msg = create(RateLimitResponseSchema, {
        statuses: [{ code: 1, limitRemaining: 3, durationUntilReset: { seconds: 1n } }],
      });
      spoil(msg);
      expect(tryEncodeRateLimitResponse(msg), what).toBeUndefined();
      expect(() => reference(msg), what).toThrow();
      expect(() => encodeRateLimitResponse(msg), what).toThrow();
    }
  });

  it('covers every field of the messages it writes', () => {
    // A field added to these types (e.g. a regenerated Envoy proto) needs the encoder taught first.
    const fields = (d: DescMessage) => d.fields.map((f) => `${f.number}:${f.name}`).sort();
    expect(fields(RateLimitResponseSchema)).toEqual(
      [
        '1:overall_code',
        '2:statuses',
        '3:response_headers_to_add',
        '4:request_headers_to_add',
        '5:raw_body',
        '6:dynamic_metadata',
        '7:quota',
      ].sort(),
    );
    expect(fields(RateLimitResponse_DescriptorStatusSchema)).toEqual(
      ['1:code', '2:current_limit', '3:limit_remaining', '4:duration_until_reset', '5:quota'].sort(),
    );
    expect(fields(RateLimitResponse_RateLimitSchema)).toEqual(
      ['1:requests_per_unit', '2:unit', '3:name'].sort(),
    );
    expect(fields(HeaderValueSchema)).toEqual(['1:key', '2:value', '3:raw_value'].sort());
    expect(fields(DurationSchema)).toEqual(['1:seconds', '2:nanos'].sort());
  });
});

describe('fastEncoderFor', () => {
  it('finds the encoder for the RateLimitResponse descriptor only', () => {
    expect(fastEncoderFor(RateLimitResponseSchema)).toBeDefined();
    expect(fastEncoderFor(RateLimitResponse_DescriptorStatusSchema)).toBeUndefined();
    // Same type name, another descriptor: its fields may differ.
    expect(fastEncoderFor({ ...RateLimitResponseSchema })).toBeUndefined();
  });

  it('serializes gRPC RLS responses, messages and init shapes alike', () => {
    const serialize = grpcServiceDefinition(RateLimitService)['shouldRateLimit']!.responseSerialize;
    const init = {
      overallCode: RateLimitResponse_Code.OK,
      responseHeadersToAdd: [{ key: 'x-ratelimit-remaining', value: '9' }],
    };
    const msg = create(RateLimitResponseSchema, init);
    expect(serialize(msg)).toEqual(reference(msg));
    expect(serialize(init)).toEqual(reference(msg));
  });
});
