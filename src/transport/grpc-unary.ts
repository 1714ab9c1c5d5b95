/**
 * One unary call on the gRPC port, answered on its HTTP/2 stream without grpc-js: the request read
 * and decoded, the handler run, the answer framed with OK trailers or a trailers-only status.
 */
import type { DescMethod } from '@bufbuild/protobuf';
import { Code } from '@connectrpc/connect';
import type { Logger } from '../log.js';
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
import type { H2Stream } from './h2-session.js';
import { encodeHeaders } from './hpack.js';
import { failure } from './status.js';
import type { CallContext, ServiceBinding } from './types.js';

/** Request headers that are the transport's, not the handler's (as grpc-js leaves them out of metadata). */
const TRANSPORT_HEADERS = new Set([
  'content-type',
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
  constructor(private readonly stream: H2Stream) {}

  get headers(): Headers {
    if (!this.#headers) {
      const h = new Headers();
      for (const [k, v] of Object.entries(this.stream.headers)) {
        if (k.startsWith(':') || TRANSPORT_HEADERS.has(k) || v === undefined) continue;
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
    const s = this.stream.session.socket;
    return `grpc ${s.remoteAddress}:${s.remotePort}`;
  }
}

/** A unary method the port answers itself. */
export interface UnaryRoute {
  binding: ServiceBinding;
  method: DescMethod;
  path: string;
  decode: (bytes: Buffer) => unknown;
  /** Completes an init shape into a message first, as grpcServiceDefinition's serializer does. */
  encode: (msg: unknown) => Buffer;
}

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
const NOT_GRPC = encodeHeaders([[':status', '415']]);

/**
 * One unary call, read and answered on the HTTP/2 stream itself: the request body is collected, its
 * single message decoded, the handler run and its answer framed, then headers, message and OK trailers
 * (or a trailers-only status). grpc-timeout ends the call with DEADLINE_EXCEEDED, as grpc-js does.
 */
export const serveUnary = (route: UnaryRoute, stream: H2Stream, log: Logger): void => {
  const { headers } = stream;
  const contentType = headers['content-type'];
  if (typeof contentType !== 'string' || !contentType.startsWith('application/grpc')) {
    stream.respond(NOT_GRPC, true);
    return;
  }
  const ctx = new UnaryCallContext(stream);
  let answered = false;
  let timer: NodeJS.Timeout | undefined;
  /** Marks the call answered; false when the client has gone and nothing is to be written. */
  const settle = (): boolean => {
    answered = true;
    clearTimeout(timer);
    return !stream.closed;
  };
  const end = (status: WireStatus): void => {
    if (answered || !settle()) return;
    stream.respond(
      encodeHeaders([
        [':status', '200'],
        ['content-type', 'application/grpc+proto'],
        ['grpc-status', String(status.code)],
        ['grpc-message', encodeMessage(status.message)],
      ]),
      true,
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
    if (!settle()) return;
    stream.answer(OK_HEADERS, out, OK_TRAILERS);
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
  stream.ondata = (chunk) => {
    if (answered) return;
    size += chunk.length;
    // Refused while it arrives rather than buffered whole: the prefix and the largest message.
    if (size > MAX_MESSAGE_BYTES + 5) end(tooLarge(size - 5));
    // A view of the socket's read, kept as is: Node allocates each read anew.
    else chunks.push(chunk);
  };
  stream.onend = () => run(unframe(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), route.path));
  stream.onclose = () => {
    clearTimeout(timer);
    if (!answered) {
      answered = true;
      ctx.cancel();
    }
  };
};
