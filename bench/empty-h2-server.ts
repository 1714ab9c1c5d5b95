/**
 * The ceiling of the framework the gRPC port runs on: our HTTP/2 layer (src/transport/h2-session.ts)
 * answering ShouldRateLimit with a constant OK, the request read and decoded as the empty grpc-js
 * server does. Run as its own process: `node empty-h2-server.js PORT`.
 */
import { type AddressInfo, createServer } from 'node:net';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { RateLimitRequestSchema, RateLimitResponseSchema } from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { tuneGc } from '../src/gc.js';
import { frame } from '../src/transport/grpc-wire.js';
import { H2Session, type H2Stream } from '../src/transport/h2-session.js';
import { encodeHeaders } from '../src/transport/hpack.js';
import { EMPTY_OK } from './requests.js';

// The serve command's V8 settings, so the ratios compare frameworks, not GC flags.
tuneGc();

const HEADERS = encodeHeaders([
  [':status', '200'],
  ['content-type', 'application/grpc+proto'],
]);
const TRAILERS = encodeHeaders([['grpc-status', '0']]);

const onStream = (stream: H2Stream): void => {
  const chunks: Buffer[] = [];
  stream.ondata = (c) => chunks.push(c);
  stream.onend = () => {
    fromBinary(RateLimitRequestSchema, Buffer.concat(chunks).subarray(5));
    stream.respond(HEADERS);
    stream.end(frame(toBinary(RateLimitResponseSchema, EMPTY_OK)), TRAILERS);
  };
};

const server = createServer((socket) => new H2Session(socket, { onStream, onClose: () => {} }));
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () =>
  console.log(`listening ${(server.address() as AddressInfo).port}`),
);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
