/**
 * One unary call answered on a stream of our own HTTP/2 layer (h2-session.ts), for either port: the
 * request body collected, its message decoded, the handler run, the answer written. What differs
 * between gRPC and Connect — the body's framing, the deadline header, how a status travels — is the
 * port's UnaryWire (grpc-unary.ts, connect-unary.ts).
 */
import type { DescMethod } from '@bufbuild/protobuf';
import { Code } from '@connectrpc/connect';
import type { Logger } from '../log.js';
import { type MethodCodec, methodCodec } from './codec.js';
import type { H2Headers, H2Stream } from './h2-session.js';
import { failure, type WireStatus } from './status.js';
import type { CallContext, ServiceBinding } from './types.js';

/** The request message in a whole body, or the status that ends the call instead. */
export type Unwrapped = { message: Buffer } | { status: WireStatus };

/** What a port's protocol makes of a unary call on an HTTP/2 stream. */
export interface UnaryWire {
  /** Named in the call's peer, for logs. */
  transport: 'grpc' | 'http';
  /** Request headers the protocol consumes, left out of what the handler sees. */
  transportHeaders: ReadonlySet<string>;
  /** The deadline in ms the request headers set (undefined: none), or the status a malformed one ends the call with. */
  deadline: (headers: H2Headers) => number | undefined | WireStatus;
  /** Body bytes beyond which the call is refused as they arrive. */
  maxBody: number;
  /** The status for a body over maxBody: `bytes` as its content-length promised, or as read so far. */
  tooLarge: (bytes: number, promised: boolean) => WireStatus;
  unwrap: (body: Buffer, headers: H2Headers, path: string) => Unwrapped | Promise<Unwrapped>;
  /** The status for bytes that are not the method's request message. */
  undecodable: (err: unknown) => WireStatus;
  /** Writes the answer: the response message's bytes. */
  ok: (stream: H2Stream, message: Buffer) => void;
  /** Writes the call's failure. */
  fail: (stream: H2Stream, status: WireStatus) => void;
}

/** setTimeout's longest delay; a later deadline cannot fire before the call ends anyway. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A unary call on an HTTP/2 stream: what its handler sees, built lazily (most handlers read none of it). */
class UnaryCallContext implements CallContext {
  #headers?: Headers;
  #abort?: AbortController;
  cancelled = false;
  constructor(
    private readonly stream: H2Stream,
    private readonly wire: UnaryWire,
  ) {}

  get headers(): Headers {
    if (!this.#headers) {
      const h = new Headers();
      for (const [k, v] of Object.entries(this.stream.headers)) {
        if (k.startsWith(':') || this.wire.transportHeaders.has(k) || v === undefined) continue;
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
    return `${this.wire.transport} ${s.remoteAddress}:${s.remotePort}`;
  }
}

/** A unary method a port answers itself. */
export interface UnaryRoute extends MethodCodec {
  binding: ServiceBinding;
  method: DescMethod;
  path: string;
}

/** Every bound unary method by its HTTP/2 path (the same on gRPC and Connect: /package.Service/Method). */
export const unaryRoutes = (bindings: ServiceBinding[]): Map<string, UnaryRoute> => {
  const routes = new Map<string, UnaryRoute>();
  for (const binding of bindings) {
    for (const method of binding.service.methods) {
      if (method.methodKind !== 'unary' || !binding.impl[method.localName]) continue;
      const path = `/${binding.service.typeName}/${method.name}`;
      routes.set(path, { binding, method, path, ...methodCodec(method) });
    }
  }
  return routes;
};

/**
 * One unary call, read and answered on the stream itself. A deadline ends the call with
 * DEADLINE_EXCEEDED and aborts the handler's signal, as grpc-js does.
 */
export const serveUnary = (route: UnaryRoute, stream: H2Stream, wire: UnaryWire, log: Logger): void => {
  const { headers } = stream;
  const ctx = new UnaryCallContext(stream, wire);
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
    wire.fail(stream, status);
  };
  const failed = (err: unknown): void => end(failure(route.method.name, err, log));
  const answer = (res: unknown): void => {
    if (answered) return;
    let out: Buffer;
    try {
      out = route.encode(res);
    } catch (err) {
      failed(err);
      return;
    }
    if (!settle()) return;
    wire.ok(stream, out);
  };
  const run = (u: Unwrapped): void => {
    if (answered) return;
    if ('status' in u) {
      end(u.status);
      return;
    }
    let req: unknown;
    try {
      req = route.decode(u.message);
    } catch (err) {
      // A transport failure, not the handler's: bytes that are not the method's message.
      end(wire.undecodable(err));
      return;
    }
    let result: Promise<unknown>;
    try {
      route.binding.auth?.(ctx);
      result = route.binding.impl[route.method.localName]!(req, ctx);
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(answer, failed);
  };

  const deadline = wire.deadline(headers);
  if (typeof deadline === 'object') {
    end(deadline);
    return;
  }
  if (stream.contentLength > wire.maxBody) {
    end(wire.tooLarge(stream.contentLength, true));
    return;
  }
  if (deadline !== undefined && deadline <= MAX_TIMER_MS) {
    timer = setTimeout(() => {
      end({ code: Code.DeadlineExceeded, message: 'deadline exceeded' });
      ctx.cancel();
    }, deadline);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  stream.ondata = (chunk) => {
    if (answered) return;
    size += chunk.length;
    // Refused while it arrives rather than buffered whole.
    if (size > wire.maxBody) end(wire.tooLarge(size, false));
    // A view of the socket's read, kept as is: Node allocates each read anew.
    else chunks.push(chunk);
  };
  stream.onend = () => {
    if (answered) return;
    const u = wire.unwrap(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), headers, route.path);
    if (u instanceof Promise) u.then(run);
    else run(u);
  };
  stream.onclose = () => {
    clearTimeout(timer);
    if (!answered) {
      answered = true;
      ctx.cancel();
    }
  };
};
