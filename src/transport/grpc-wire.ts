/**
 * The gRPC-over-HTTP/2 wire rules the unary path needs (grpc/grpc doc/PROTOCOL-HTTP2.md): message
 * framing, grpc-timeout, and the status a call ends with. Pure: no streams here.
 */
import { gunzip, inflate } from 'node:zlib';
import { Code } from '@connectrpc/connect';
import type { WireStatus } from './status.js';

/** grpc-js's default receive limit, kept so clients see the same RESOURCE_EXHAUSTED either way. */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** A message's prefix: compressed flag and length. */
export const PREFIX = 5;

const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** grpc-timeout ("TimeoutValue TimeoutUnit", at most 8 digits) in whole ms; undefined when malformed. */
export const parseTimeout = (value: string): number | undefined => {
  const m = /^(\d{1,8})([HMSmun])$/.exec(value.trim());
  if (!m) return undefined;
  return Math.ceil(Number(m[1]) * UNIT_MS[m[2]!]!);
};

/** A message with its 5-byte prefix (never compressed), ready for one DATA write. */
export const frame = (message: Uint8Array): Buffer => {
  const out = Buffer.allocUnsafe(PREFIX + message.byteLength);
  out[0] = 0;
  out.writeUInt32BE(message.byteLength, 1);
  out.set(message, PREFIX);
  return out;
};

/** What a unary request body held: its one message (`compressed` per its flag), or why the call must end. */
export type Unframed = { message: Buffer; compressed: boolean } | { status: WireStatus };

/** The single message of a unary request body. */
export const unframe = (body: Buffer, path: string): Unframed => {
  if (body.length === 0)
    return { status: { code: Code.Unimplemented, message: `no request message for ${path}` } };
  if (body.length < PREFIX) return { status: { code: Code.Internal, message: 'truncated message prefix' } };
  const length = body.readUInt32BE(1);
  if (length > MAX_MESSAGE_BYTES) return { status: tooLarge(length) };
  const end = PREFIX + length;
  if (body.length < end) return { status: { code: Code.Internal, message: 'truncated message' } };
  if (body.length > end) {
    return { status: { code: Code.Unimplemented, message: `a second request message for unary ${path}` } };
  }
  return { message: body.subarray(PREFIX, end), compressed: body[0] !== 0 };
};

/** A compressed message's bytes; `encoding` is the grpc-encoding header (gzip and deflate, as grpc-js accepts). */
export const decompress = (bytes: Buffer, encoding: string | undefined): Promise<Unframed> => {
  if (encoding !== 'gzip' && encoding !== 'deflate') {
    return Promise.resolve({
      status: {
        code: Code.Unimplemented,
        message: `message compressed with unsupported encoding "${encoding}"`,
      },
    });
  }
  return new Promise((resolve) =>
    (encoding === 'gzip' ? gunzip : inflate)(bytes, { maxOutputLength: MAX_MESSAGE_BYTES }, (err, out) =>
      resolve(
        err
          ? {
              status:
                (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE'
                  ? tooLarge(MAX_MESSAGE_BYTES + 1)
                  : { code: Code.Internal, message: 'failed to decompress message' },
            }
          : { message: out, compressed: false },
      ),
    ),
  );
};

/** RESOURCE_EXHAUSTED for a message of `bytes`, worded as grpc-js words it. */
export const tooLarge = (bytes: number): WireStatus => ({
  code: Code.ResourceExhausted,
  message: `received message larger than max (${bytes} vs. ${MAX_MESSAGE_BYTES})`,
});

/** grpc-message is percent-encoded; encodeURI keeps the printable ASCII readers expect, like grpc-js. */
export const encodeMessage = (message: string): string => encodeURI(message);
