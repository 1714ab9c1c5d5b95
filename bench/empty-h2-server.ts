/**
 * The ceiling of the framework the gRPC port's unary path runs on: a bare node:http2 server answering
 * ShouldRateLimit with a constant OK, the request read and decoded as the empty grpc-js server does.
 * Run as its own process: `node empty-h2-server.js PORT`.
 */
import { createServer, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { RateLimitRequestSchema, RateLimitResponseSchema } from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { frame } from '../src/transport/grpc-wire.js';
import { EMPTY_OK } from './requests.js';

const HEADERS = { ':status': 200, 'content-type': 'application/grpc+proto' };
const TRAILERS = { 'grpc-status': '0' };
// Node reads sendDate (no Date header), though its types do not list it.
const RESPOND = { waitForTrailers: true, sendDate: false };

const server = createServer();
server.on('stream', (stream: ServerHttp2Stream) => {
  const chunks: Buffer[] = [];
  stream.on('error', () => {});
  stream.on('data', (c: Buffer) => chunks.push(c));
  stream.once('end', () => {
    fromBinary(RateLimitRequestSchema, Buffer.concat(chunks).subarray(5));
    stream.respond(HEADERS, RESPOND);
    stream.once('wantTrailers', () => stream.sendTrailers(TRAILERS));
    stream.end(frame(toBinary(RateLimitResponseSchema, EMPTY_OK)));
  });
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () =>
  console.log(`listening ${(server.address() as AddressInfo).port}`),
);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
