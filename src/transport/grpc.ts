import { EventEmitter } from 'node:events';
import { type AddressInfo, createServer } from 'node:net';
import { type DescMethod, type DescService, fromBinary, type Message, toBinary } from '@bufbuild/protobuf';
import {
  type MethodDefinition,
  Server,
  ServerCredentials,
  type ServerInterceptingCall,
  type ServerInterceptor,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { methodCodec } from './codec.js';
import { asBuffer } from './fast-encode.js';
import { GRPC_UNARY, isGrpc, NOT_GRPC } from './grpc-unary.js';
import {
  H2Session,
  type H2Stream,
  KEEPALIVE_TIME_MS,
  KEEPALIVE_TIMEOUT_MS,
  keepAlive,
} from './h2-session.js';
import { addReflection } from './reflection.js';
import { Relay } from './relay.js';
import { failure, toGrpcError } from './status.js';
import type { CallContext, Listener, ListenerOptions, ServiceBinding } from './types.js';
import { serveUnary, unaryRoutes } from './unary.js';

const ignore = (): void => {};

/**
 * Node 20 keeps a closed HTTP/2 stream reachable until the next full GC, and grpc-js leaves its
 * per-call listeners on it, so each call's request, decision and Redis command were promoted to the
 * old generation with the stream (`--trace-gc-nvp`: ~0.5 MB per scavenge at 5 calls in flight, half
 * that without them). Once the stream has closed (every close listener has run: emit iterates a
 * copy), nothing else will be emitted but an error, which is ignored. grpc-js hands the first
 * interceptor its base call, whose `stream` is the HTTP/2 stream.
 */
export const detachOnClose: ServerInterceptor = (_method, call) => {
  const { stream } = call as { stream?: unknown };
  if (stream instanceof EventEmitter) {
    stream.once('close', () => {
      stream.removeAllListeners();
      stream.on('error', ignore);
    });
  }
  // grpc-js chains interceptors through the call interface; the call itself, not a wrapper per call.
  return call as ServerInterceptingCall;
};

/**
 * channelz bookkeeping costs on every call and nobody reads it here. Server keepalive pings find
 * dead client connections (a vanished Envoy) without waiting for the OS.
 */
export const SERVER_OPTIONS = {
  'grpc.enable_channelz': 0,
  'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
  'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  interceptors: [detachOnClose],
};

/** A grpc-js service definition whose (de)serializers are the protobuf-es generated types. */
export const grpcServiceDefinition = (service: DescService): ServiceDefinition => {
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    if (m.methodKind !== 'unary' && m.methodKind !== 'server_streaming') {
      throw new Error(`${service.typeName}/${m.name}: ${m.methodKind} methods are not supported`);
    }
    const codec = methodCodec(m);
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === 'server_streaming',
      originalName: m.localName,
      requestSerialize: (msg) => asBuffer(toBinary(m.input, msg as Message)),
      requestDeserialize: codec.decode,
      responseSerialize: codec.encode,
      responseDeserialize: (buf) => fromBinary(m.output, buf),
    };
  }
  return def;
};

/** A server-streaming call's context (unary calls get UnaryCallContext), built lazily as that one is. */
class GrpcCallContext implements CallContext {
  #headers?: Headers;
  #abort?: AbortController;
  constructor(private readonly call: ServerWritableStream<unknown, unknown>) {}

  get headers(): Headers {
    if (!this.#headers) {
      const h = new Headers();
      for (const [k, v] of Object.entries(this.call.metadata.getMap())) {
        // Binary (-bin) metadata is passed on base64-encoded, as it travels on the wire.
        h.append(k, typeof v === 'string' ? v : (v as Buffer).toString('base64'));
      }
      this.#headers = h;
    }
    return this.#headers;
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get controller(): AbortController {
    if (!this.#abort) {
      const ac = new AbortController();
      this.#abort = ac;
      if (this.call.cancelled) ac.abort();
      else this.call.once('cancelled', () => ac.abort());
    }
    return this.#abort;
  }

  get peer(): string {
    return `grpc ${this.call.getPeer()}`;
  }
}

/**
 * The gRPC port, on our own HTTP/2 layer (h2-session.ts). Unary methods are answered on it directly
 * (grpc-js's per-call machinery halved the empty server's rate here: 35–39k vs 12–20k calls/s with
 * h2load, and node:http2 itself cost several times our layer); everything else — server streaming,
 * health, reflection, unknown paths — goes through a relay to a grpc-js server that has no port of
 * its own.
 */
export const startGrpc = async (opts: ListenerOptions): Promise<Listener> => {
  const { log } = opts;
  const inner = new Server(SERVER_OPTIONS);
  const streams = new Set<GrpcCallContext>();
  const routes = unaryRoutes(opts.bindings);

  const streaming =
    (binding: ServiceBinding, m: DescMethod) =>
    (call: ServerWritableStream<unknown, unknown>): void => {
      const fn = binding.impl[m.localName];
      const ctx = new GrpcCallContext(call);
      streams.add(ctx);
      const run = async (): Promise<void> => {
        binding.auth?.(ctx);
        const { signal } = ctx;
        for await (const msg of fn!(call.request, ctx) as AsyncIterable<unknown>) {
          if (signal.aborted) break;
          if (!call.write(msg)) {
            await new Promise<void>((resolve) => {
              call.once('drain', resolve);
              signal.addEventListener('abort', () => resolve(), { once: true });
            });
          }
        }
        if (!call.cancelled) call.end();
      };
      run()
        .catch((err) => {
          if (!call.cancelled) call.emit('error', toGrpcError(failure(m.name, err, log)));
        })
        .finally(() => streams.delete(ctx));
    };

  for (const binding of opts.bindings) {
    const impl: UntypedServiceImplementation = {};
    const def = grpcServiceDefinition(binding.service);
    for (const m of binding.service.methods) {
      if (binding.impl[m.localName] && m.methodKind === 'server_streaming') {
        impl[m.localName] = streaming(binding, m);
      }
    }
    inner.addService(def, impl);
  }
  opts.health.addToServer(inner);
  addReflection(
    inner,
    opts.bindings.map((b) => b.service),
  );
  const injector = inner.createConnectionInjector(ServerCredentials.createInsecure());
  const relay = new Relay((end) => injector.injectConnection(end));

  const sessions = new Set<H2Session>();
  const onStream = (stream: H2Stream): void => {
    const route = routes.get((stream.headers[':path'] as string | undefined) ?? '');
    if (!route) relay.pass(stream);
    else if (isGrpc(stream.headers)) serveUnary(route, stream, GRPC_UNARY, log);
    else stream.respond(NOT_GRPC, true);
  };
  const server = createServer((socket) => {
    let pings: NodeJS.Timeout | undefined;
    const session = new H2Session(socket, {
      onStream,
      onClose: (s) => {
        sessions.delete(s);
        clearInterval(pings);
      },
    });
    pings = keepAlive(session);
    sessions.add(session);
  });

  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
  // After listening, an accept failure (e.g. out of file descriptors) is logged, not thrown.
  server.on('error', (err) => log.error({ err }, 'gRPC listener error'));

  return {
    port,
    shutdown: (drainMs) =>
      new Promise<void>((resolve) => {
        opts.health.endWatches();
        for (const ctx of streams) ctx.controller.abort();
        const timer = setTimeout(() => {
          log.warn({ drainMs }, 'gRPC drain timed out; cancelling remaining calls');
          for (const s of sessions) s.destroy();
          injector.destroy();
          inner.forceShutdown();
          resolve();
        }, drainMs);
        // Stop accepting; each session gets GOAWAY and closes once its in-flight calls finish.
        server.close(() => {
          relay.close();
          inner.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        for (const s of sessions) s.close();
      }),
  };
};
