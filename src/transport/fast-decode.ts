/**
 * Hand-written binary decoder for RateLimitRequest, the message of every RLS call: the reflective
 * `fromBinary` cost ~3% of server CPU per decision, and Envoy sends the same small shape every time
 * (a domain, descriptors of key/value entries, maybe hits_addend). The messages are exactly
 * `fromBinary`'s (same fields, optional fields absent, strings decoded alike); anything else (a
 * descriptor's limit override or hits_addend, unknown fields, other wire types, malformed input or
 * invalid UTF-8) is left to `fromBinary`, which also raises its errors.
 */
import { type DescMessage, fromBinary, type Message } from '@bufbuild/protobuf';
import type {
  RateLimitDescriptor,
  RateLimitDescriptor_Entry,
} from '../../gen/envoy/extensions/common/ratelimit/v3/ratelimit_pb.js';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
} from '../../gen/envoy/service/ratelimit/v3/rls_pb.js';

// Tags: field number << 3 | wire type (0 varint, 2 length-delimited).
const REQUEST_DOMAIN = 0x0a;
const REQUEST_DESCRIPTORS = 0x12;
const REQUEST_HITS_ADDEND = 0x18;
const DESCRIPTOR_ENTRIES = 0x0a;
const ENTRY_KEY = 0x0a;
const ENTRY_VALUE = 0x12;

/** Thrown (never escapes) when the input needs `fromBinary`; preallocated, so no stack is captured. */
const UNSUPPORTED = new Error('fast-decode: unsupported message');
const unsupported = (): never => {
  throw UNSUPPORTED;
};

/** protobuf-es refuses invalid UTF-8 (a fatal TextDecoder): here that throws, and fromBinary then raises it. */
const utf8 = new TextDecoder('utf-8', { fatal: true });

const EMPTY: Buffer = Buffer.alloc(0);
/**
 * Decoding is synchronous and not re-entrant: the input and position live here rather than in a
 * reader object per call.
 */
let buf: Buffer = EMPTY;
let pos = 0;

/** A varint of at most 5 bytes whose value fits 32 bits (tags, lengths, uint32); else unsupported. */
const varint32 = (end: number): number => {
  let v = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    if (pos >= end) unsupported();
    const b = buf[pos++]!;
    v += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) return v <= 0xffffffff ? v : unsupported();
  }
  return unsupported();
};

/** The end of a length-delimited field starting at pos, within end. */
const delimited = (end: number): number => {
  const n = varint32(end);
  if (n > end - pos) unsupported();
  return pos + n;
};

const string = (end: number): string => {
  const stop = delimited(end);
  const start = pos;
  pos = stop;
  for (let i = start; i < stop; i++) if (buf[i]! > 0x7f) return utf8.decode(buf.subarray(start, stop));
  // ASCII: the same characters as UTF-8, without TextDecoder's per-call cost.
  return (buf as unknown as { latin1Slice(s: number, e: number): string }).latin1Slice(start, stop);
};

const entry = (end: number): RateLimitDescriptor_Entry => {
  const e: RateLimitDescriptor_Entry = {
    $typeName: 'envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry',
    key: '',
    value: '',
  };
  while (pos < end) {
    const tag = varint32(end);
    if (tag === ENTRY_KEY) e.key = string(end);
    else if (tag === ENTRY_VALUE) e.value = string(end);
    else unsupported();
  }
  return e;
};

const descriptor = (end: number): RateLimitDescriptor => {
  const d: RateLimitDescriptor = {
    $typeName: 'envoy.extensions.common.ratelimit.v3.RateLimitDescriptor',
    entries: [],
  };
  while (pos < end) {
    if (varint32(end) !== DESCRIPTOR_ENTRIES) unsupported();
    d.entries.push(entry(delimited(end)));
  }
  return d;
};

const request = (end: number): RateLimitRequest => {
  const r: RateLimitRequest = {
    $typeName: 'envoy.service.ratelimit.v3.RateLimitRequest',
    domain: '',
    descriptors: [],
    hitsAddend: 0,
  };
  while (pos < end) {
    const tag = varint32(end);
    if (tag === REQUEST_DOMAIN) r.domain = string(end);
    else if (tag === REQUEST_DESCRIPTORS) r.descriptors.push(descriptor(delimited(end)));
    else if (tag === REQUEST_HITS_ADDEND) r.hitsAddend = varint32(end);
    else unsupported();
  }
  return r;
};

/** `fromBinary(RateLimitRequestSchema, bytes)` when this decoder reads every field; else undefined. */
export const tryDecodeRateLimitRequest = (bytes: Buffer): RateLimitRequest | undefined => {
  buf = bytes;
  pos = 0;
  try {
    return request(bytes.length);
  } catch {
    return undefined;
  } finally {
    // The input is not kept past the call.
    buf = EMPTY;
  }
};

/** `fromBinary(RateLimitRequestSchema, bytes)`, read by hand when possible. */
export const decodeRateLimitRequest = (bytes: Buffer): RateLimitRequest =>
  tryDecodeRateLimitRequest(bytes) ?? fromBinary(RateLimitRequestSchema, bytes);

/**
 * The hand-written decoder for messages of `schema`, if any: only for the very descriptor it was
 * written against (another descriptor of the same name may have other fields).
 */
export const fastDecoderFor = (schema: DescMessage): ((bytes: Buffer) => Message) | undefined =>
  schema === RateLimitRequestSchema ? decodeRateLimitRequest : undefined;
