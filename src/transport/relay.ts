/**
 * Passes HTTP/2 streams the gRPC port does not serve itself (health, reflection, server streaming,
 * unknown paths) to an in-process grpc-js server, over a connection that never leaves memory.
 */

import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  connect,
  constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import { Duplex } from 'node:stream';

const ignore = (): void => {};

/** Two Duplex ends: what one writes, the other reads (Node 20 has no stream.duplexPair). */
const duplexPair = (): [Duplex, Duplex] => {
  const ends: Duplex[] = [];
  const end = (other: 0 | 1): Duplex =>
    new Duplex({
      read: ignore,
      write(chunk: Buffer, _enc, cb) {
        ends[other]!.push(chunk);
        cb();
      },
      final(cb) {
        ends[other]!.push(null);
        cb();
      },
      destroy(err, cb) {
        ends[other]!.destroy();
        cb(err);
      },
    });
  ends.push(end(1), end(0));
  return [ends[0]!, ends[1]!];
};

/** Received headers as headers to send: Node's incoming objects have a null prototype and may hold undefined. */
const toOutgoing = (h: IncomingHttpHeaders): OutgoingHttpHeaders => {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[k] = v;
  return out;
};

export class Relay {
  #session?: ClientHttp2Session;

  /** `inject` hands the server end of a fresh in-memory connection to the inner server. */
  constructor(private readonly inject: (end: Duplex) => void) {}

  #connect(): ClientHttp2Session {
    if (this.#session && !this.#session.closed && !this.#session.destroyed) return this.#session;
    const [client, server] = duplexPair();
    this.inject(server);
    const session = connect('http://relay', { createConnection: () => client });
    session.on('error', ignore);
    session.once('close', () => {
      if (this.#session === session) this.#session = undefined;
    });
    this.#session = session;
    return session;
  }

  /** Relays one stream both ways: headers, messages, trailers, and a reset from either side. */
  pass(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    let up: ClientHttp2Stream;
    try {
      up = this.#connect().request(toOutgoing(headers), { endStream: false });
    } catch {
      stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    up.on('error', ignore);
    let trailers: OutgoingHttpHeaders = {};
    up.once('response', (h, flags) => {
      if (stream.closed) return;
      if (flags & constants.NGHTTP2_FLAG_END_STREAM) {
        // Trailers-only (an error status): the response headers are the whole answer.
        stream.respond(toOutgoing(h), { endStream: true });
        return;
      }
      stream.respond(toOutgoing(h), { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers(trailers));
      up.pipe(stream);
    });
    up.once('trailers', (t) => {
      trailers = toOutgoing(t);
    });
    stream.pipe(up);
    stream.once('close', () => {
      if (!up.closed) up.close(constants.NGHTTP2_CANCEL);
    });
    up.once('close', () => {
      if (!stream.closed && !stream.headersSent) stream.close(up.rstCode ?? constants.NGHTTP2_INTERNAL_ERROR);
      else if (!stream.closed && up.rstCode) stream.close(up.rstCode);
    });
  }

  close(): void {
    this.#session?.close();
  }
}
