/**
 * Hand-written binary encoder for RateLimitResponse, the answer to every RLS decision: the reflective
 * `toBinary` cost ~8% of server CPU per decision plus its garbage. One pass sizes the message, one
 * Buffer is allocated, a second pass writes it. The bytes are exactly `toBinary`'s (fields in number
 * order, proto3 zero values omitted); anything this encoder does not write itself (dynamic_metadata,
 * quota, unknown fields, values `toBinary` would coerce or reject) sends the whole message to
 * `toBinary`.
 */
import { type DescMessage, type Message, toBinary } from '@bufbuild/protobuf';
import type { Duration } from '@bufbuild/protobuf/wkt';
import type { HeaderValue } from '../../gen/envoy/config/core/v3/base_pb.js';
import {
  type RateLimitResponse,
  type RateLimitResponse_DescriptorStatus,
  type RateLimitResponse_RateLimit,
  RateLimitResponseSchema,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';

// Typed by the generated messages, so a renamed type fails to compile.
const RESPONSE: RateLimitResponse['$typeName'] = 'envoy.service.ratelimit.v3.RateLimitResponse';
const STATUS: RateLimitResponse_DescriptorStatus['$typeName'] =
  'envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus';
const LIMIT: RateLimitResponse_RateLimit['$typeName'] =
  'envoy.service.ratelimit.v3.RateLimitResponse.RateLimit';
const DURATION: Duration['$typeName'] = 'google.protobuf.Duration';
const HEADER: HeaderValue['$typeName'] = 'envoy.config.core.v3.HeaderValue';

// Tags: field number << 3 | wire type (0 varint, 2 length-delimited).
const RESPONSE_CODE = 0x08;
const RESPONSE_STATUSES = 0x12;
const RESPONSE_RESPONSE_HEADERS = 0x1a;
const RESPONSE_REQUEST_HEADERS = 0x22;
const RESPONSE_RAW_BODY = 0x2a;
const STATUS_CODE = 0x08;
const STATUS_CURRENT_LIMIT = 0x12;
const STATUS_LIMIT_REMAINING = 0x18;
const STATUS_DURATION = 0x22;
const LIMIT_REQUESTS_PER_UNIT = 0x08;
const LIMIT_UNIT = 0x10;
const LIMIT_NAME = 0x1a;
const DURATION_SECONDS = 0x08;
const DURATION_NANOS = 0x10;
const HEADER_KEY = 0x0a;
const HEADER_VALUE = 0x12;
const HEADER_RAW_VALUE = 0x1a;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** Thrown (never escapes) when the message needs `toBinary`; preallocated, so no stack is captured. */
const UNSUPPORTED = new Error('fast-encode: unsupported message');
const unsupported = (): never => {
  throw UNSUPPORTED;
};

/**
 * Encoding is synchronous and not re-entrant, so one scratch array serves every call: the sizing pass
 * records string and nested-message byte lengths in `lens` in writing order, the writing pass reads
 * them back from the start.
 */
const lens: number[] = [];
let li = 0;

// --- sizing: validates as it goes, like toBinary's writers would, and throws UNSUPPORTED otherwise

const varint32Size = (n: number): number =>
  n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;

/** Checks the type and that nothing would be written after the known fields. */
const checkMessage = (m: Message, typeName: string): void => {
  if (m.$typeName !== typeName || (m.$unknown !== undefined && m.$unknown.length > 0)) unsupported();
};

/** toBinary writes a message field set as an own property (proto3 leaves unset ones undefined). */
const isSet = <T extends object>(m: T, key: keyof T & string): boolean =>
  m[key] !== undefined && Object.hasOwn(m, key);

/** int32 / enum field with implicit presence; negatives are sign-extended to 10 bytes. */
const int32Size = (v: number): number => {
  if (typeof v !== 'number' || (v | 0) !== v) unsupported();
  return v === 0 ? 0 : v < 0 ? 11 : 1 + varint32Size(v);
};

const uint32Size = (v: number): number => {
  if (typeof v !== 'number' || v >>> 0 !== v) unsupported();
  return v === 0 ? 0 : 1 + varint32Size(v);
};

const int64Size = (v: bigint): number => {
  if (typeof v !== 'bigint' || v < INT64_MIN || v > INT64_MAX) unsupported();
  if (v === 0n) return 0;
  if (v > 0n && v <= 0xffffffffn) return 1 + varint32Size(Number(v));
  let u = BigInt.asUintN(64, v);
  let n = 2;
  while (u > 0x7fn) {
    u >>= 7n;
    n++;
  }
  return n;
};

const stringSize = (s: string): number => {
  if (typeof s !== 'string') unsupported();
  if (s === '') return 0;
  // Counts a lone surrogate as U+FFFD (3 bytes), as TextEncoder and Buffer.write encode it.
  const n = Buffer.byteLength(s, 'utf8');
  lens[li++] = n;
  return 1 + varint32Size(n) + n;
};

const bytesSize = (b: Uint8Array): number => {
  if (!(b instanceof Uint8Array)) unsupported();
  return b.byteLength === 0 ? 0 : 1 + varint32Size(b.byteLength) + b.byteLength;
};

/** A nested message's length goes in the slot reserved before its own fields' lengths. */
const nested = (n: number, slot: number): number => {
  lens[slot] = n;
  return 1 + varint32Size(n) + n;
};

const limitSize = (m: RateLimitResponse_RateLimit): number => {
  checkMessage(m, LIMIT);
  const slot = li++;
  return nested(uint32Size(m.requestsPerUnit) + int32Size(m.unit) + stringSize(m.name), slot);
};

const durationSize = (m: Duration): number => {
  checkMessage(m, DURATION);
  const slot = li++;
  return nested(int64Size(m.seconds) + int32Size(m.nanos), slot);
};

const statusSize = (m: RateLimitResponse_DescriptorStatus): number => {
  checkMessage(m, STATUS);
  if (m.quota !== undefined) unsupported();
  const slot = li++;
  let n = int32Size(m.code);
  if (isSet(m, 'currentLimit')) n += limitSize(m.currentLimit!);
  n += uint32Size(m.limitRemaining);
  if (isSet(m, 'durationUntilReset')) n += durationSize(m.durationUntilReset!);
  return nested(n, slot);
};

const headerSize = (m: HeaderValue): number => {
  checkMessage(m, HEADER);
  const slot = li++;
  return nested(stringSize(m.key) + stringSize(m.value) + bytesSize(m.rawValue), slot);
};

const responseSize = (m: RateLimitResponse): number => {
  checkMessage(m, RESPONSE);
  if (m.dynamicMetadata !== undefined || m.quota !== undefined) unsupported();
  let n = int32Size(m.overallCode);
  for (let i = 0; i < m.statuses.length; i++) n += statusSize(m.statuses[i]!);
  for (let i = 0; i < m.responseHeadersToAdd.length; i++) n += headerSize(m.responseHeadersToAdd[i]!);
  for (let i = 0; i < m.requestHeadersToAdd.length; i++) n += headerSize(m.requestHeadersToAdd[i]!);
  return n + bytesSize(m.rawBody);
};

// --- writing: values were validated by the sizing pass. The position is passed and returned rather
// than kept in module state, which V8 would reload and store on every byte.

const writeVarint32 = (buf: Buffer, p: number, v: number): number => {
  while (v > 0x7f) {
    buf[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[p++] = v;
  return p;
};

const writeInt32 = (buf: Buffer, p: number, tag: number, v: number): number => {
  if (v === 0) return p;
  buf[p++] = tag;
  if (v > 0) return writeVarint32(buf, p, v);
  for (let i = 0; i < 9; i++) {
    buf[p++] = (v & 0x7f) | 0x80;
    v >>= 7;
  }
  buf[p++] = 1;
  return p;
};

const writeUint32 = (buf: Buffer, p: number, tag: number, v: number): number => {
  if (v === 0) return p;
  buf[p++] = tag;
  return writeVarint32(buf, p, v);
};

const writeInt64 = (buf: Buffer, p: number, tag: number, v: bigint): number => {
  if (v === 0n) return p;
  buf[p++] = tag;
  if (v > 0n && v <= 0xffffffffn) return writeVarint32(buf, p, Number(v));
  let u = BigInt.asUintN(64, v);
  while (u > 0x7fn) {
    buf[p++] = Number(u & 0x7fn) | 0x80;
    u >>= 7n;
  }
  buf[p++] = Number(u);
  return p;
};

const writeString = (buf: Buffer, p: number, tag: number, s: string): number => {
  if (s === '') return p;
  const n = lens[li++]!;
  buf[p++] = tag;
  p = writeVarint32(buf, p, n);
  // Equal lengths mean pure ASCII, whose latin1 bytes are its UTF-8 (latin1 skips UTF-8's checks). A
  // charCodeAt loop took twice as long per response (~7 µs against ~3.7 µs for scenario c's answer).
  // Should it ever write other than the counted bytes, the final size check catches it.
  return p + buf.write(s, p, n, n === s.length ? 'latin1' : 'utf8');
};

const writeBytes = (buf: Buffer, p: number, tag: number, b: Uint8Array): number => {
  if (b.byteLength === 0) return p;
  buf[p++] = tag;
  p = writeVarint32(buf, p, b.byteLength);
  buf.set(b, p);
  return p + b.byteLength;
};

const writeNested = (buf: Buffer, p: number, tag: number): number => {
  buf[p++] = tag;
  return writeVarint32(buf, p, lens[li++]!);
};

const writeStatus = (buf: Buffer, p: number, m: RateLimitResponse_DescriptorStatus): number => {
  p = writeNested(buf, p, RESPONSE_STATUSES);
  p = writeInt32(buf, p, STATUS_CODE, m.code);
  if (isSet(m, 'currentLimit')) {
    const l = m.currentLimit!;
    p = writeNested(buf, p, STATUS_CURRENT_LIMIT);
    p = writeUint32(buf, p, LIMIT_REQUESTS_PER_UNIT, l.requestsPerUnit);
    p = writeInt32(buf, p, LIMIT_UNIT, l.unit);
    p = writeString(buf, p, LIMIT_NAME, l.name);
  }
  p = writeUint32(buf, p, STATUS_LIMIT_REMAINING, m.limitRemaining);
  if (isSet(m, 'durationUntilReset')) {
    const d = m.durationUntilReset!;
    p = writeNested(buf, p, STATUS_DURATION);
    p = writeInt64(buf, p, DURATION_SECONDS, d.seconds);
    p = writeInt32(buf, p, DURATION_NANOS, d.nanos);
  }
  return p;
};

const writeHeader = (buf: Buffer, p: number, tag: number, m: HeaderValue): number => {
  p = writeNested(buf, p, tag);
  p = writeString(buf, p, HEADER_KEY, m.key);
  p = writeString(buf, p, HEADER_VALUE, m.value);
  return writeBytes(buf, p, HEADER_RAW_VALUE, m.rawValue);
};

const writeResponse = (buf: Buffer, m: RateLimitResponse): number => {
  let p = writeInt32(buf, 0, RESPONSE_CODE, m.overallCode);
  for (let i = 0; i < m.statuses.length; i++) p = writeStatus(buf, p, m.statuses[i]!);
  for (let i = 0; i < m.responseHeadersToAdd.length; i++)
    p = writeHeader(buf, p, RESPONSE_RESPONSE_HEADERS, m.responseHeadersToAdd[i]!);
  for (let i = 0; i < m.requestHeadersToAdd.length; i++)
    p = writeHeader(buf, p, RESPONSE_REQUEST_HEADERS, m.requestHeadersToAdd[i]!);
  return writeBytes(buf, p, RESPONSE_RAW_BODY, m.rawBody);
};

/**
 * The bytes `toBinary(RateLimitResponseSchema, msg)` produces, in one Buffer; undefined when `msg` has
 * something only `toBinary` writes, or a value it would coerce or reject.
 */
export const tryEncodeRateLimitResponse = (msg: RateLimitResponse): Buffer | undefined => {
  try {
    li = 0;
    const size = responseSize(msg);
    const buf = Buffer.allocUnsafe(size);
    li = 0;
    // A sizing/writing mismatch would be a bug here; toBinary still answers correctly.
    return writeResponse(buf, msg) === size ? buf : undefined;
  } catch {
    // UNSUPPORTED, or a shape toBinary must judge (e.g. a repeated field that is not an array).
    return undefined;
  }
};

/** Encoded protobuf bytes as a Buffer over the same memory (grpc-js wants Buffers). */
export const asBuffer = (u8: Uint8Array): Buffer => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);

/** `toBinary(RateLimitResponseSchema, msg)` as a Buffer, written by hand when possible. */
export const encodeRateLimitResponse = (msg: RateLimitResponse): Buffer =>
  tryEncodeRateLimitResponse(msg) ?? asBuffer(toBinary(RateLimitResponseSchema, msg));

/**
 * The hand-written encoder for messages of `schema`, if any: only for the very descriptor it was
 * written against (another descriptor of the same name may have other fields).
 */
export const fastEncoderFor = (schema: DescMessage): ((msg: Message) => Buffer) | undefined =>
  schema === RateLimitResponseSchema ? (encodeRateLimitResponse as (msg: Message) => Buffer) : undefined;
