/**
 * A Connect unary call with a binary body over h2c, answered on the HTTP port's own HTTP/2 layer the
 * way connect-node answers it (connectrpc.com/docs/protocol): the body is the message, connect-timeout-ms
 * its deadline, the answer a 200 application/proto, a failure an HTTP status with a JSON error body.
 * Every other request on that port — JSON, compressed bodies, GET, streams, gRPC, gRPC-Web — is
 * left to connect-node.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { codeToHttpStatus, errorToJsonBytes, parseTimeout } from '@connectrpc/connect/protocol-connect';
import { asBuffer } from './fast-encode.js';
import type { H2Headers } from './h2-session.js';
import { encodeHeaders } from './hpack.js';
import type { UnaryWire } from './unary.js';

/** Requests larger than this are refused before decoding (connect-node's readMaxBytes on the same port). */
export const READ_MAX_BYTES = 4 * 1024 * 1024;

/**
 * Whether the request is one this path answers exactly as connect-node would: a POST of
 * application/proto, identity-encoded, with no deadline or a well-formed one (a malformed one is
 * connect-node's to word).
 */
export const isConnectUnaryProto = (headers: H2Headers): boolean => {
  const encoding = headers['content-encoding'];
  const timeout = headers['connect-timeout-ms'];
  return (
    headers[':method'] === 'POST' &&
    headers['content-type'] === 'application/proto' &&
    (encoding === undefined || encoding === 'identity') &&
    (timeout === undefined ||
      (typeof timeout === 'string' && parseTimeout(timeout, Infinity).error === undefined))
  );
};

export const CONNECT_UNARY: UnaryWire = {
  transport: 'http',
  // connect-node hands handlers every header.
  transportHeaders: new Set(),
  deadline: (headers) => {
    const timeout = headers['connect-timeout-ms'];
    return typeof timeout === 'string' ? parseTimeout(timeout, Infinity).timeoutMs : undefined;
  },
  maxBody: READ_MAX_BYTES,
  tooLarge: (bytes, promised) => ({
    code: Code.ResourceExhausted,
    message: `message size ${promised ? `${bytes} ` : ''}is larger than configured readMaxBytes ${READ_MAX_BYTES}`,
  }),
  unwrap: (body) => ({ message: body }),
  undecodable: (err) => ({
    code: Code.Internal,
    message: `parse binary: ${err instanceof Error ? err.message : String(err)}`,
  }),
  ok: (stream, message) =>
    stream.answer(
      encodeHeaders([
        [':status', '200'],
        ['content-type', 'application/proto'],
        ['content-length', String(message.length)],
      ]),
      message,
    ),
  fail: (stream, status) => {
    const body = asBuffer(errorToJsonBytes(new ConnectError(status.message, status.code), {}));
    stream.answer(
      encodeHeaders([
        [':status', String(codeToHttpStatus(status.code))],
        ['content-type', 'application/json'],
        ['content-length', String(body.length)],
      ]),
      body,
    );
  },
};
