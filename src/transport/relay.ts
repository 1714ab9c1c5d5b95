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
} from 'node:http2';
import { Duplex } from 'node:stream';
import type { H2Headers, H2Stream } from './h2-session.js';
import { encodeHeaders } from './hpack.js';

const ignore = (): void => {};
/** Longest wait for the inner server's answer before a client's cancel is passed on (see pass). */
const CANCEL_AFTER_MS = 1000;

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

/**
 * Received headers as headers to send: the incoming objects have a null prototype and may hold
 * undefined. content-length is checked by our session already; the inner server's own check would
 * reset a stream grpc-js has not seen yet, and grpc-js throws answering it.
 */
const toOutgoing = (h: H2Headers): OutgoingHttpHeaders => {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && k !== 'content-length') out[k] = v;
  return out;
};

/** The inner server's headers as a block for the client: pseudo-headers first, as HTTP/2 requires. */
const toBlock = (h: IncomingHttpHeaders): Buffer => {
  const fields: [string, string][] = [];
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined) continue;
    const values = Array.isArray(v) ? v : [String(v)];
    for (const one of values) {
      if (k.startsWith(':')) fields.unshift([k, one]);
      else fields.push([k, one]);
    }
  }
  return encodeHeaders(fields);
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
  pass(stream: H2Stream): void {
    let up: ClientHttp2Stream;
    try {
      up = this.#connect().request(toOutgoing(stream.headers), { endStream: false });
    } catch {
      stream.reset(constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    up.on('error', ignore);
    let trailers: IncomingHttpHeaders = {};
    let answered = false;
    up.once('response', (h, flags) => {
      answered = true;
      if (stream.closed) return;
      if (flags & constants.NGHTTP2_FLAG_END_STREAM) {
        // Trailers-only (an error status): the response headers are the whole answer.
        stream.respond(toBlock(h), true);
        return;
      }
      stream.respond(toBlock(h));
      up.on('data', (chunk: Buffer) => {
        if (!stream.write(chunk)) up.pause();
      });
      stream.ondrain = () => up.resume();
      up.once('end', () => stream.end(undefined, toBlock(trailers)));
    });
    up.once('trailers', (t) => {
      trailers = t;
    });
    stream.ondata = (chunk) => up.write(chunk);
    stream.onend = () => up.end();
    // A cancel sent with the request's HEADERS reaches the inner server before its deferred 'stream'
    // event, and grpc-js then throws answering a destroyed stream (a request followed at once by a
    // connection error crashed the process): the cancel waits for the inner server's answer, or a
    // second at most.
    stream.onclose = () => {
      if (up.closed) return;
      const cancel = (): void => {
        clearTimeout(timer);
        if (!up.closed) up.close(constants.NGHTTP2_CANCEL);
      };
      const timer = setTimeout(cancel, CANCEL_AFTER_MS);
      if (answered) cancel();
      else up.once('response', cancel);
    };
    up.once('close', () => {
      if (!stream.closed && !stream.headersSent) stream.reset(up.rstCode || constants.NGHTTP2_INTERNAL_ERROR);
      else if (!stream.closed && up.rstCode) stream.reset(up.rstCode);
    });
  }

  close(): void {
    this.#session?.close();
  }
}
