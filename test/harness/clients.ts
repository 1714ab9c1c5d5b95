/**
 * Clients for any generated service, using the same protobuf-es types as the server:
 * - grpcClient: @grpc/grpc-js over a real socket (what Envoy does), promisified;
 * - connectClient: @connectrpc/connect-node, over Connect (JSON or binary), gRPC or gRPC-Web.
 */
import type { DescMessage, DescMethod, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { type Client as ConnectClient, createClient, type Transport } from '@connectrpc/connect';
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from '@connectrpc/connect-node';
import * as grpc from '@grpc/grpc-js';

export interface CallOptions {
  /** Request metadata / headers, e.g. `{ authorization: 'Bearer …' }`. */
  headers?: Record<string, string>;
  /** Cancels the call (gRPC CANCELLED). */
  signal?: AbortSignal;
  deadlineMs?: number;
}

type Unary<I extends DescMessage, O extends DescMessage> = (
  req: MessageInitShape<I>,
  opts?: CallOptions,
) => Promise<MessageShape<O>>;
type Streaming<I extends DescMessage, O extends DescMessage> = (
  req: MessageInitShape<I>,
  opts?: CallOptions,
) => AsyncIterable<MessageShape<O>>;

export type GrpcClient<S extends GenService<GenServiceMethods>> =
  S extends GenService<infer T>
    ? {
        [K in keyof T]: T[K] extends { methodKind: 'unary'; input: infer I; output: infer O }
          ? I extends DescMessage
            ? O extends DescMessage
              ? Unary<I, O>
              : never
            : never
          : T[K] extends { methodKind: 'server_streaming'; input: infer I; output: infer O }
            ? I extends DescMessage
              ? O extends DescMessage
                ? Streaming<I, O>
                : never
              : never
            : never;
      } & { close(): void; channel: grpc.Client }
    : never;

/** A grpc-js error: `code` is a grpc.status, `details` the server's message. */
export type GrpcError = grpc.ServiceError;

const metadataOf = (headers: Record<string, string> = {}): grpc.Metadata => {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(headers)) md.set(k, v);
  return md;
};

const callOptions = (opts: CallOptions = {}): grpc.CallOptions =>
  opts.deadlineMs === undefined ? {} : { deadline: Date.now() + opts.deadlineMs };

/** A promisified grpc-js client for a generated service: `await client.shouldRateLimit({...})`. */
export const grpcClient = <S extends GenService<GenServiceMethods>>(
  service: S,
  address: string,
  options: grpc.ClientOptions = {},
): GrpcClient<S> => {
  const channel = new grpc.Client(address, grpc.credentials.createInsecure(), options);
  const out: Record<string, unknown> = { close: () => channel.close(), channel };
  for (const m of service.methods as DescMethod[]) {
    const path = `/${service.typeName}/${m.name}`;
    const serialize = (msg: MessageInitShape<DescMessage>) =>
      Buffer.from(toBinary(m.input, create(m.input, msg)));
    const deserialize = (buf: Buffer) => fromBinary(m.output, buf);
    if (m.methodKind === 'unary') {
      out[m.localName] = (req: MessageInitShape<DescMessage>, opts: CallOptions = {}) =>
        new Promise((resolve, reject) => {
          const call = channel.makeUnaryRequest(
            path,
            serialize,
            deserialize,
            req,
            metadataOf(opts.headers),
            callOptions(opts),
            (err, res) => (err ? reject(err) : resolve(res)),
          );
          opts.signal?.addEventListener('abort', () => call.cancel(), { once: true });
        });
    } else if (m.methodKind === 'server_streaming') {
      out[m.localName] = (req: MessageInitShape<DescMessage>, opts: CallOptions = {}) => {
        const call = channel.makeServerStreamRequest(
          path,
          serialize,
          deserialize,
          req,
          metadataOf(opts.headers),
          callOptions(opts),
        );
        opts.signal?.addEventListener('abort', () => call.cancel(), { once: true });
        return call as AsyncIterable<unknown>;
      };
    }
  }
  return out as GrpcClient<S>;
};

export type ConnectProtocol = 'connect-json' | 'connect-binary' | 'grpc' | 'grpc-web';

/** A transport to the HTTP port; Connect and gRPC-Web over HTTP/1.1, gRPC over h2c. */
export const connectTransport = (baseUrl: string, protocol: ConnectProtocol): Transport => {
  switch (protocol) {
    case 'connect-json':
      return createConnectTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: false });
    case 'connect-binary':
      return createConnectTransport({ baseUrl, httpVersion: '2', useBinaryFormat: true });
    case 'grpc':
      return createGrpcTransport({ baseUrl });
    case 'grpc-web':
      return createGrpcWebTransport({ baseUrl, httpVersion: '1.1' });
  }
};

/** A Connect client (errors are ConnectError with `.code` a Code and `.rawMessage`). */
export const connectClient = <S extends GenService<GenServiceMethods>>(
  service: S,
  baseUrl: string,
  protocol: ConnectProtocol = 'connect-json',
): ConnectClient<S> => createClient(service, connectTransport(baseUrl, protocol));

/** Every protocol the HTTP port speaks, for tests that run the same case on each. */
export const CONNECT_PROTOCOLS: readonly ConnectProtocol[] = [
  'connect-json',
  'connect-binary',
  'grpc',
  'grpc-web',
];
