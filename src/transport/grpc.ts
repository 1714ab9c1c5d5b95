import { EventEmitter } from 'node:events';
import {
  createServer,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { AddressInfo } from 'node:net';
import {
  create,
  type DescMethod,
  type DescService,
  fromBinary,
  isMessage,
  type Message,
  toBinary,
} from '@bufbuild/protobuf';
import { Code } from '@connectrpc/connect';
import {
  type MethodDefinition,
  Server,
  ServerCredentials,
  type ServerInterceptingCall,
  type ServerInterceptor,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { fastDecoderFor } from './fast-decode.js';
import { asBuffer, fastEncoderFor } from './fast-encode.js';
import {
  decompress,
  encodeMessage,
  frame,
  MAX_MESSAGE_BYTES,
  parseTimeout,
  tooLarge,
  type Unframed,
  unframe,
  type WireStatus,
} from './grpc-wire.js';
import { addReflection } from './reflection.js';
import { Relay } from './relay.js';
import { failure, toGrpcError } from './status.js';
import type { CallContext, Listener, ListenerOptions, ServiceBinding } from './types.js';

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
const KEEPALIVE_TIME_MS = 60_000;
const KEEPALIVE_TIMEOUT_MS = 20_000;

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
    // The hot path's messages (RateLimitRequest, RateLimitResponse) are read and written by hand; the rest
    // go through fromBinary / toBinary.
    const decode = fastDecoderFor(m.input) ?? ((buf: Buffer) => fromBinary(m.input, buf));
    const encode = fastEncoderFor(m.output) ?? ((msg: Message) => asBuffer(toBinary(m.output, msg)));
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === 'server_streaming',
      originalName: m.localName,
      requestSerialize: (msg) => asBuffer(toBinary(m.input, msg as Message)),
      requestDeserialize: decode,
      // Handlers may answer with an init shape (as Connect allows): complete it into a message.
      responseSerialize: (msg) =>
        encode(isMessage(msg, m.output) ? msg : create(m.output, msg as Record<string, unknown>)),
      responseDeserialize: (buf) => fromBinary(m.output, buf),
    };
  }
  return def;
};

/** Built lazily: most RLS calls read neither headers nor the signal, and this is the hot path. */
type SurfaceCall = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>;

class GrpcCallContext implements CallContext {
  #headers?: Headers;
  #abort?: AbortController;
  constructor(private readonly call: SurfaceCall) {}

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

/** Request headers that are the transport's, not the handler's (as grpc-js leaves them out of metadata). */
const TRANSPORT_HEADERS = new Set([
  'grpc-timeout',
  'grpc-encoding',
  'grpc-accept-encoding',
  'accept-encoding',
  'te',
]);

/** A unary call on the HTTP/2 port: what its handler sees, built lazily like GrpcCallContext. */
class UnaryCallContext implements CallContext {
  #headers?: Headers;
  #abort?: AbortController;
  cancelled = false;
  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly raw: IncomingHttpHeaders,
  ) {}

  get headers(): Headers {
    if (!this.#headers) {
      const h = new Headers();
      for (const [k, v] of Object.entries(this.raw)) {
        if (k.startsWith(':') || k === 'content-type' || TRANSPORT_HEADERS.has(k) || v === undefined)
          continue;
        for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
      }
      this.#headers = h;
    }
    return this.#headers;
  }

  get signal(): AbortSignal {
    if (!this.#abort) {
      this.#abort = new AbortController();
      if (this.cancelled) this.#abort.abort();
    }
    return this.#abort.signal;
  }

  cancel(): void {
    this.cancelled = true;
    this.#abort?.abort();
  }

  get peer(): string {
    const s = this.stream.session?.socket;
    return `grpc ${s?.remoteAddress}:${s?.remotePort}`;
  }
}

/** A unary method the port answers itself. */
interface UnaryRoute {
  binding: ServiceBinding;
  method: DescMethod;
  path: string;
  decode: (bytes: Buffer) => unknown;
  /** Completes an init shape into a message first, as grpcServiceDefinition's serializer does. */
  encode: (msg: unknown) => Buffer;
}

const OK_HEADERS = {
  ':status': 200,
  'content-type': 'application/grpc+proto',
  'grpc-accept-encoding': 'identity,deflate,gzip',
  'grpc-encoding': 'identity',
};
const OK_TRAILERS = { 'grpc-status': '0', 'grpc-message': 'OK' };
const RESPOND_MESSAGE = { waitForTrailers: true, sendDate: false };
const RESPOND_ONLY = { endStream: true, sendDate: false };

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/** Once a stream has closed Node keeps it until a full GC; what its listeners hold must not stay with it. */
function detachStream(this: ServerHttp2Stream): void {
  this.removeAllListeners();
  this.on('error', ignore);
}

/**
 * One unary call, read and answered on the HTTP/2 stream itself: the request body is collected, its
 * single message decoded, the handler run and its answer framed, then headers, message and OK trailers
 * (or a trailers-only status). grpc-timeout ends the call with DEADLINE_EXCEEDED, as grpc-js does.
 */
const serveUnary = (
  route: UnaryRoute,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  log: Logger,
): void => {
  stream.on('error', ignore);
  const contentType = headers['content-type'];
  if (typeof contentType !== 'string' || !contentType.startsWith('application/grpc')) {
    stream.respond({ ':status': 415 }, RESPOND_ONLY);
    return;
  }
  const ctx = new UnaryCallContext(stream, headers);
  let answered = false;
  let timer: NodeJS.Timeout | undefined;
  const end = (status: WireStatus): void => {
    if (answered) return;
    answered = true;
    clearTimeout(timer);
    if (stream.closed) return;
    stream.respond(
      {
        ':status': 200,
        'content-type': 'application/grpc+proto',
        'grpc-status': String(status.code),
        'grpc-message': encodeMessage(status.message),
      },
      RESPOND_ONLY,
    );
  };
  const answer = (res: unknown): void => {
    if (answered) return;
    let out: Buffer;
    try {
      out = frame(route.encode(res));
    } catch (err) {
      end(failure(route.method.name, err, log));
      return;
    }
    answered = true;
    clearTimeout(timer);
    if (stream.closed) return;
    stream.respond(OK_HEADERS, RESPOND_MESSAGE);
    stream.once('wantTrailers', sendOkTrailers);
    stream.end(out);
  };
  const run = (u: Unframed): void => {
    if (answered) return;
    if ('status' in u) {
      end(u.status);
      return;
    }
    if (u.compressed) {
      decompress(u.message, headers['grpc-encoding'] as string | undefined).then(run);
      return;
    }
    let req: unknown;
    try {
      req = route.decode(u.message);
    } catch {
      // As grpc-js answers bytes that are not the method's message: a transport failure, not the handler's.
      end({ code: Code.Internal, message: 'error deserializing request' });
      return;
    }
    let result: Promise<unknown>;
    try {
      route.binding.auth?.(ctx);
      result = route.binding.impl[route.method.localName]!(req, ctx);
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(answer, (err) => end(failure(route.method.name, err, log)));
  };

  const timeout = headers['grpc-timeout'];
  if (typeof timeout === 'string') {
    const ms = parseTimeout(timeout);
    if (ms === undefined) {
      end({ code: Code.Internal, message: `invalid grpc-timeout value "${timeout}"` });
      return;
    }
    timer = setTimeout(() => {
      end({ code: Code.DeadlineExceeded, message: 'deadline exceeded' });
      ctx.cancel();
    }, ms);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  stream.on('data', (chunk: Buffer) => {
    if (answered) return;
    size += chunk.length;
    // Refused while it arrives rather than buffered whole: the prefix and the largest message.
    if (size > MAX_MESSAGE_BYTES + 5) end(tooLarge(size - 5));
    else chunks.push(chunk);
  });
  stream.once('end', () =>
    run(unframe(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), route.path)),
  );
  stream.once('close', () => {
    clearTimeout(timer);
    if (!answered) {
      answered = true;
      ctx.cancel();
    }
  });
  stream.once('close', detachStream);
};

/** HTTP/2 keepalive: a session that does not answer a ping in time is cut (a vanished Envoy). */
const keepAlive = (session: ServerHttp2Session): void => {
  const interval = setInterval(() => {
    const deadline = setTimeout(() => session.destroy(), KEEPALIVE_TIMEOUT_MS).unref();
    try {
      const sent = session.ping((err) => {
        clearTimeout(deadline);
        if (err) session.destroy();
      });
      if (!sent) clearTimeout(deadline);
    } catch {
      // Closing already: its own close ends this interval.
      clearTimeout(deadline);
    }
  }, KEEPALIVE_TIME_MS).unref();
  session.once('close', () => clearInterval(interval));
};

/**
 * The gRPC port. Unary methods are answered on node:http2 directly (grpc-js's per-call machinery
 * halved the empty server's rate here: 35–39k vs 12–20k calls/s with h2load); everything else —
 * server streaming, health, reflection, unknown paths — goes through a relay to a grpc-js server
 * that has no port of its own.
 */
export const startGrpc = async (opts: ListenerOptions): Promise<Listener> => {
  const { log } = opts;
  const inner = new Server(SERVER_OPTIONS);
  const streams = new Set<GrpcCallContext>();
  const routes = new Map<string, UnaryRoute>();

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
      if (!binding.impl[m.localName]) continue;
      if (m.methodKind === 'server_streaming') {
        impl[m.localName] = streaming(binding, m);
        continue;
      }
      const d = def[m.localName]!;
      routes.set(d.path, {
        binding,
        method: m,
        path: d.path,
        decode: d.requestDeserialize as UnaryRoute['decode'],
        encode: d.responseSerialize as UnaryRoute['encode'],
      });
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

  // As grpc-js configures its own: Node's session memory cap degrades badly under load when reached.
  const h2 = createServer({
    maxSendHeaderBlockLength: Number.MAX_SAFE_INTEGER,
    maxSessionMemory: Number.MAX_SAFE_INTEGER,
  });
  const sessions = new Set<ServerHttp2Session>();
  h2.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    session.on('error', ignore);
    session.once('close', () => sessions.delete(session));
    keepAlive(session);
  });
  h2.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    const route = routes.get(headers[':path'] ?? '');
    if (route) serveUnary(route, stream, headers, log);
    else relay.pass(stream, headers);
  });

  const port = await new Promise<number>((resolve, reject) => {
    h2.once('error', reject);
    h2.listen(opts.port, opts.host, () => {
      h2.off('error', reject);
      resolve((h2.address() as AddressInfo).port);
    });
  });
  // After listening, an accept failure (e.g. out of file descriptors) is logged, not thrown.
  h2.on('error', (err) => log.error({ err }, 'gRPC listener error'));

  return {
    port,
    shutdown: (drainMs) =>
      new Promise<void>((resolve) => {
        opts.health.endWatches();
        for (const ctx of streams) ctx.controller.abort();
        let pending = 2;
        const done = (): void => {
          if (--pending === 0) {
            clearTimeout(timer);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          log.warn({ drainMs }, 'gRPC drain timed out; cancelling remaining calls');
          for (const s of sessions) s.destroy();
          injector.destroy();
          inner.forceShutdown();
          resolve();
        }, drainMs);
        // Stop accepting; each session gets GOAWAY and closes once its in-flight calls finish.
        h2.close(() => {
          relay.close();
          inner.tryShutdown(done);
          done();
        });
        for (const s of sessions) s.close();
      }),
  };
};
