/**
 * A unary call on the gRPC port, answered without grpc-js: a body of one length-prefixed message,
 * grpc-timeout, the answer framed with OK trailers, a failure as a trailers-only status.
 */
import { Code } from '@connectrpc/connect';
import {
  decompress,
  encodeMessage,
  frame,
  MAX_MESSAGE_BYTES,
  PREFIX,
  parseTimeout,
  tooLarge,
  unframe,
} from './grpc-wire.js';
import type { H2Headers } from './h2-session.js';
import { encodeHeaders } from './hpack.js';
import type { UnaryWire } from './unary.js';

// Every answer's header blocks, encoded once.
const OK_HEADERS = encodeHeaders([
  [':status', '200'],
  ['content-type', 'application/grpc+proto'],
  ['grpc-accept-encoding', 'identity,deflate,gzip'],
  ['grpc-encoding', 'identity'],
]);
const OK_TRAILERS = encodeHeaders([
  ['grpc-status', '0'],
  ['grpc-message', 'OK'],
]);
export const NOT_GRPC = encodeHeaders([[':status', '415']]);

/** A gRPC request, by its content type; anything else on a unary path is answered NOT_GRPC. */
export const isGrpc = (headers: H2Headers): boolean => {
  const contentType = headers['content-type'];
  return typeof contentType === 'string' && contentType.startsWith('application/grpc');
};

export const GRPC_UNARY: UnaryWire = {
  transport: 'grpc',
  // As grpc-js leaves them out of metadata.
  transportHeaders: new Set([
    'content-type',
    'grpc-timeout',
    'grpc-encoding',
    'grpc-accept-encoding',
    'accept-encoding',
    'te',
  ]),
  deadline: (headers) => {
    const timeout = headers['grpc-timeout'];
    if (typeof timeout !== 'string') return undefined;
    return (
      parseTimeout(timeout) ?? { code: Code.Internal, message: `invalid grpc-timeout value "${timeout}"` }
    );
  },
  maxBody: MAX_MESSAGE_BYTES + PREFIX,
  tooLarge: (bytes) => tooLarge(bytes - PREFIX),
  unwrap: (body, headers, path) => {
    const u = unframe(body, path);
    if ('status' in u || !u.compressed) return u;
    return decompress(u.message, headers['grpc-encoding'] as string | undefined);
  },
  // As grpc-js answers bytes that are not the method's message.
  undecodable: () => ({ code: Code.Internal, message: 'error deserializing request' }),
  ok: (stream, message) => stream.answer(OK_HEADERS, frame(message), OK_TRAILERS),
  fail: (stream, status) =>
    stream.respond(
      encodeHeaders([
        [':status', '200'],
        ['content-type', 'application/grpc+proto'],
        ['grpc-status', String(status.code)],
        ['grpc-message', encodeMessage(status.message)],
      ]),
      true,
    ),
};
