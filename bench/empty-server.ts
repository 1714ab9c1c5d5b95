/**
 * The framework ceiling: a bare @grpc/grpc-js server answering ShouldRateLimit with a constant OK,
 * decoding and encoding with the same protobuf-es serializers as the real server. Run as its own
 * process: `node empty-server.js PORT`.
 */
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import {
  type RateLimitRequest,
  RateLimitRequestSchema,
  type RateLimitResponse,
  RateLimitResponseSchema,
} from '../gen/envoy/service/ratelimit/v3/rls_pb.js';
import { tuneGc } from '../src/gc.js';
import { EMPTY_OK, SERVICE_PATH } from './requests.js';

// The serve command's V8 settings, so the ratios compare frameworks, not GC flags.
tuneGc();

const definition: grpc.ServiceDefinition = {
  shouldRateLimit: {
    path: SERVICE_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: RateLimitRequest) => Buffer.from(toBinary(RateLimitRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(RateLimitRequestSchema, b),
    responseSerialize: (m: RateLimitResponse) => Buffer.from(toBinary(RateLimitResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(RateLimitResponseSchema, b),
  },
};

const server = new grpc.Server();
server.addService(definition, {
  shouldRateLimit: (
    _call: grpc.ServerUnaryCall<RateLimitRequest, RateLimitResponse>,
    cb: grpc.sendUnaryData<RateLimitResponse>,
  ) => cb(null, EMPTY_OK),
});

const port = Number(process.argv[2] ?? 0);
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(`listening ${bound}`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
process.on('SIGINT', () => server.tryShutdown(() => process.exit(0)));
