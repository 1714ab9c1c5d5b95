import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2, { type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import net, { type Socket } from 'node:net';
import type { DescMethod } from '@bufbuild/protobuf';
import {
  type ConnectRouter,
  createContextKey,
  createContextValues,
  type HandlerContext,
  type MethodImpl,
} from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import type { Logger } from '../log.js';
import { CONNECT_UNARY, isConnectUnaryProto, READ_MAX_BYTES } from './connect-unary.js';
import { H2Session, keepAlive } from './h2-session.js';
import { Relay } from './relay.js';
import { failure, toConnectError } from './status.js';
import { keepStreamTablesYoung } from './stream-tables.js';
import type { CallContext, Listener, ListenerOptions, ServiceBinding } from './types.js';
import { serveUnary, unaryRoutes } from './unary.js';

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

const peerKey = createContextKey('unknown', { description: 'remote address' });

const address = (socket: Socket): string => `${socket.remoteAddress}:${socket.remotePort}`;

const callContext = (hctx: HandlerContext, signal: AbortSignal = hctx.signal): CallContext => ({
  headers: hctx.requestHeader,
  signal,
  peer: `http ${hctx.values.get(peerKey)}`,
});

/** The same bindings as on the gRPC port, as Connect routes: RkError → ConnectError by the one mapping. */
const routes =
  (bindings: ServiceBinding[], log: Logger, shutdown: AbortSignal) => (router: ConnectRouter) => {
    for (const binding of bindings) {
      for (const m of binding.service.methods) {
        const fn = binding.impl[m.localName];
        if (!fn) continue;
        if (m.methodKind === 'unary') {
          const impl = async (req: unknown, hctx: HandlerContext) => {
            const ctx = callContext(hctx);
            try {
              binding.auth?.(ctx);
              return await fn(req, ctx);
            } catch (err) {
              throw toConnectError(failure(m.name, err, log));
            }
          };
          router.rpc(m, impl as MethodImpl<DescMethod>);
        } else if (m.methodKind === 'server_streaming') {
          const impl = async function* (req: unknown, hctx: HandlerContext) {
            // Shutdown ends open streams so that draining does not wait on them.
            const ctx = callContext(hctx, AbortSignal.any([hctx.signal, shutdown]));
            try {
              binding.auth?.(ctx);
              for await (const msg of fn(req, ctx) as AsyncIterable<unknown>) {
                if (ctx.signal.aborted) return;
                yield msg;
              }
            } catch (err) {
              throw toConnectError(failure(m.name, err, log));
            }
          };
          router.rpc(m, impl as unknown as MethodImpl<DescMethod>);
        }
      }
    }
  };

/**
 * One port, HTTP/1.1 and cleartext h2 (prior knowledge): node's http2 server only negotiates HTTP/1.1
 * over TLS, so each connection's first bytes pick its server. HTTP/1.1 goes to node:http and
 * connect-node. h2c connections are ours (h2-session.ts): Connect unary calls with binary bodies are
 * answered there (connect-unary.ts; through node:http2 and connect-node such a call cost several times
 * as much), and every other stream is relayed to node:http2 and connect-node in memory, one inner
 * connection per client connection.
 */
export const startHttp = async (opts: ListenerOptions): Promise<Listener> => {
  const { log, health } = opts;
  const stopping = new AbortController();
  /** The client address of each relayed connection's inner session, which sees only the relay. */
  const peers = new WeakMap<Http2Session, string>();
  const adapter = connectNodeAdapter({
    routes: routes(opts.bindings, log, stopping.signal),
    readMaxBytes: READ_MAX_BYTES,
    contextValues: (req) =>
      createContextValues().set(
        peerKey,
        ('stream' in req ? peers.get(req.stream.session as Http2Session) : undefined) ??
          (req.socket ? address(req.socket) : 'unknown'),
      ),
  });
  const unary = unaryRoutes(opts.bindings);

  let active = 0;
  const sessions = new Set<H2Session>();
  let idle: (() => void) | undefined;
  const settled = (): void => {
    if (active === 0 && sessions.size === 0) idle?.();
  };
  const handle = (
    req: IncomingMessage | Http2ServerRequest,
    res: ServerResponse | Http2ServerResponse,
  ): void => {
    active++;
    res.once('close', () => {
      active--;
      settled();
    });
    if (req.url === '/healthz' && (req.method === 'GET' || req.method === 'HEAD')) {
      const code = health.serving ? 200 : 503;
      res.writeHead(code, { 'content-type': 'text/plain' });
      res.end(health.serving ? 'SERVING\n' : 'NOT_SERVING\n');
      return;
    }
    adapter(req as IncomingMessage, res as ServerResponse);
  };

  const h1 = http.createServer(handle);
  const h2 = http2.createServer(handle);
  const sockets = new Set<Socket>();
  let injected: Http2Session | undefined;
  h2.on('session', (s) => {
    injected = s;
    keepStreamTablesYoung(s);
  });

  const serveH2c = (socket: Socket): void => {
    // The inner server makes its session while the connection is handed to it.
    const relay = new Relay((end) => {
      h2.emit('connection', end);
      if (injected) peers.set(injected, address(socket));
    });
    let pings: NodeJS.Timeout | undefined;
    const session = new H2Session(socket, {
      onStream: (stream) => {
        const route = unary.get((stream.headers[':path'] as string | undefined) ?? '');
        if (route && isConnectUnaryProto(stream.headers)) serveUnary(route, stream, CONNECT_UNARY, log);
        else relay.pass(stream);
      },
      onClose: (s) => {
        sessions.delete(s);
        clearInterval(pings);
        relay.close();
        settled();
      },
    });
    pings = keepAlive(session);
    sessions.add(session);
  };

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // Peek with read()/unshift() in paused mode: whoever takes the socket then reads what is buffered,
    // which it would not do for bytes already emitted as 'data'.
    const onReadable = (): void => {
      const head = socket.read() as Buffer | null;
      if (head === null) return;
      socket.unshift(head);
      // Four bytes tell "PRI " from any HTTP/1.1 method.
      if (head.length < 4 && H2_PREFACE.subarray(0, head.length).equals(head)) return;
      socket.off('readable', onReadable);
      const isH2 = head.subarray(0, H2_PREFACE.length).equals(H2_PREFACE.subarray(0, head.length));
      if (isH2) serveH2c(socket);
      else h1.emit('connection', socket);
    };
    socket.on('readable', onReadable);
    socket.on('error', (err) => log.debug({ err }, 'http socket error'));
  });

  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });

  return {
    port,
    shutdown: async (drainMs) => {
      stopping.abort();
      server.close();
      // GOAWAY: each h2c connection closes once its calls, answered or relayed, have ended.
      for (const s of sessions) s.close();
      h1.closeIdleConnections();
      if (active > 0 || sessions.size > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            log.warn(
              { drainMs, active, connections: sessions.size },
              'HTTP drain timed out; closing remaining connections',
            );
            resolve();
          }, drainMs);
          idle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      // Let the last responses flush before the sockets go.
      h1.closeIdleConnections();
      for (const s of sessions) s.destroy();
      for (const s of sockets) s.destroySoon();
    },
  };
};
