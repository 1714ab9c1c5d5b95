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
import { failure, toConnectError } from './status.js';
import { keepStreamTablesYoung } from './stream-tables.js';
import type { CallContext, Listener, ListenerOptions, ServiceBinding } from './types.js';

/** Requests larger than this are refused before decoding. */
const READ_MAX_BYTES = 4 * 1024 * 1024;
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

const peerKey = createContextKey('unknown', { description: 'remote address' });

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
 * One port, HTTP/1.1 and cleartext h2 (prior knowledge): node's http2 server only negotiates
 * HTTP/1.1 over TLS, so each connection's first bytes pick the server it is handed to.
 */
export const startHttp = async (opts: ListenerOptions): Promise<Listener> => {
  const { log, health } = opts;
  const stopping = new AbortController();
  const adapter = connectNodeAdapter({
    routes: routes(opts.bindings, log, stopping.signal),
    readMaxBytes: READ_MAX_BYTES,
    contextValues: (req) => createContextValues().set(peerKey, req.socket?.remoteAddress ?? 'unknown'),
  });

  let active = 0;
  let idle: (() => void) | undefined;
  const handle = (
    req: IncomingMessage | Http2ServerRequest,
    res: ServerResponse | Http2ServerResponse,
  ): void => {
    active++;
    res.once('close', () => {
      active--;
      if (active === 0) idle?.();
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
  const sessions = new Set<Http2Session>();
  h2.on('session', (s) => {
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
    keepStreamTablesYoung(s);
  });

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // Peek with read()/unshift() in paused mode: http2 takes over the socket and reads what is
    // buffered, which it would not do for bytes already emitted as 'data'.
    const onReadable = (): void => {
      const head = socket.read() as Buffer | null;
      if (head === null) return;
      socket.unshift(head);
      // Four bytes tell "PRI " from any HTTP/1.1 method.
      if (head.length < 4 && H2_PREFACE.subarray(0, head.length).equals(head)) return;
      socket.off('readable', onReadable);
      const isH2 = head.subarray(0, H2_PREFACE.length).equals(H2_PREFACE.subarray(0, head.length));
      (isH2 ? h2 : h1).emit('connection', socket);
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
      for (const s of sessions) s.close();
      h1.closeIdleConnections();
      if (active > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            log.warn({ drainMs, active }, 'HTTP drain timed out; closing remaining connections');
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
      for (const s of sockets) s.destroySoon();
    },
  };
};
