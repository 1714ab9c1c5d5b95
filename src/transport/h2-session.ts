/**
 * A server-side HTTP/2 connection (RFC 9113) for the gRPC port: frames read straight off the socket,
 * header blocks through our HPACK decoder, answers written as frames in one socket write per event-loop
 * turn. Node's http2 module cost 60–110 µs of CPU per call on this machine where this layer costs
 * ~10–30 (README, Performance): its per-stream Duplex, event and C++ round trips were most of the
 * gRPC port's cost.
 */
import type { Socket } from 'node:net';
import {
  ACK,
  CANCEL,
  COMPRESSION_ERROR,
  CONTINUATION,
  ConnectionError,
  DATA,
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  END_HEADERS,
  END_STREAM,
  ENHANCE_YOUR_CALM,
  FLOW_CONTROL_ERROR,
  FRAME_HEADER,
  FRAME_SIZE_ERROR,
  frameHeader,
  GOAWAY,
  goawayFrame,
  HEADERS,
  headerFrames,
  MAX_FRAME_LIMIT,
  MAX_WINDOW,
  NO_ERROR,
  PADDED,
  PING,
  PREFACE,
  PRIORITY,
  PRIORITY_FLAG,
  PROTOCOL_ERROR,
  PUSH_PROMISE,
  pingFrame,
  REFUSED_STREAM,
  RST_STREAM,
  SETTINGS,
  SETTINGS_ACK,
  SETTINGS_ENABLE_PUSH,
  SETTINGS_HEADER_TABLE_SIZE,
  SETTINGS_INITIAL_WINDOW_SIZE,
  SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE,
  SETTINGS_MAX_HEADER_LIST_SIZE,
  STREAM_CLOSED,
  settingsFrame,
  u32Frame,
  WINDOW_UPDATE,
  writeFrameHeader,
} from './h2-frames.js';
import { HpackDecoder, HpackError } from './hpack.js';

/** Request headers as Node's http2 gives them: a null-prototype object, lower-case names. */
export type H2Headers = Record<string, string | string[] | undefined>;

/** Streams one connection may have open at once; more are refused (the client retries them). */
export const MAX_CONCURRENT_STREAMS = 10_000;
/** A header block (HEADERS + CONTINUATION) larger than this ends the connection (it must be decoded whole). */
const MAX_HEADER_BLOCK = 64 * 1024;
/**
 * Decoded header list size (names, values, 32 each, as SETTINGS_MAX_HEADER_LIST_SIZE counts) above which
 * a request is refused (RST_STREAM ENHANCE_YOUR_CALM): indexed references make a small block decode to
 * far more.
 */
const MAX_HEADER_LIST = 64 * 1024;
/** Receive windows: a stream's (a 4 MB message arrives without waiting for updates) and the connection's. */
const STREAM_WINDOW = 4 * 1024 * 1024 + 1024;
const CONNECTION_WINDOW = 16 * 1024 * 1024;
/** Stream closes between fresh copies of the open-stream table (see H2Session.#streams). */
export const STREAM_TABLE_REFRESH = 256;
/** Stream ids this side reset that are remembered, so the client's frames in flight on them are dropped. */
const RESET_MEMORY = 1024;
/** Bytes queued on a stream beyond which write() asks the producer to wait for ondrain. */
const STREAM_HIGH_WATER = 64 * 1024;
/** Socket bytes buffered beyond which reading pauses until the peer reads (a client that never reads). */
const SOCKET_HIGH_WATER = 4 * 1024 * 1024;

const CONNECTION_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
]);
/**
 * The prototype of every request's header object: it has none of its own (a header named `constructor`
 * or `__proto__` is just a header), and unlike a null prototype it lets V8 keep the object in fast mode.
 */
const NO_PROPERTIES: object = Object.freeze(Object.create(null));
const REQUEST_PSEUDO = new Set([':method', ':scheme', ':path', ':authority']);

/** A stream-level failure: RST_STREAM with this code, the connection goes on. */
class StreamError extends Error {
  constructor(readonly code: number) {
    super(`stream error ${code}`);
  }
}

export class H2Stream {
  /** Request body chunks (views of the socket's reads), the end of the body, the stream's end. */
  ondata: ((chunk: Buffer) => void) | undefined;
  onend: (() => void) | undefined;
  onclose: (() => void) | undefined;
  /** Queued bytes fell below the high-water mark after write() returned false. */
  ondrain: (() => void) | undefined;
  headersSent = false;
  closed = false;
  /** The RST_STREAM code that ended the stream, either way; undefined when it ended normally. */
  rstCode: number | undefined;
  remoteEnded = false;
  localEnded = false;
  sendWindow: number;
  recvWindow = STREAM_WINDOW;
  recvUnacked = 0;
  pending: Buffer[] = [];
  pendingBytes = 0;
  /** After the queued data: trailers (a header block), or true for an empty END_STREAM DATA frame. */
  pendingEnd: Buffer | true | undefined;
  blocked = false;
  #wantDrain = false;

  /** Body bytes so far, against content-length (-1: none given). */
  received = 0;

  constructor(
    readonly id: number,
    readonly headers: H2Headers,
    readonly session: H2Session,
    readonly contentLength: number,
  ) {
    this.sendWindow = session.peerInitialWindow;
  }

  /** Sends a header block (see hpack.encodeHeaders); endStream makes it the whole answer. */
  respond(block: Buffer, endStream = false): void {
    if (this.closed || this.headersSent) return;
    this.headersSent = true;
    this.session.queue(headerFrames(this.id, block, endStream, this.session.peerMaxFrame));
    if (endStream) this.session.localEnd(this);
  }

  /**
   * A whole answer — header block, one body, trailers if any — as one buffer of its frames when the
   * windows and the peer's frame size let the body go at once (a unary call's answer); else respond()
   * and end(). Without trailers the body's DATA frame ends the stream (a Connect unary answer).
   */
  answer(headers: Buffer, body: Buffer, trailers?: Buffer): void {
    if (this.closed || this.headersSent || this.pendingEnd !== undefined) return;
    const session = this.session;
    const max = session.peerMaxFrame;
    if (
      headers.length > max ||
      (trailers !== undefined && trailers.length > max) ||
      body.length > Math.min(max, this.sendWindow) ||
      !session.spend(body.length)
    ) {
      this.respond(headers);
      this.end(body, trailers);
      return;
    }
    this.headersSent = true;
    this.sendWindow -= body.length;
    const out = Buffer.allocUnsafe(
      (trailers ? 3 : 2) * FRAME_HEADER + headers.length + body.length + (trailers?.length ?? 0),
    );
    let at = writeFrameHeader(out, 0, headers.length, HEADERS, END_HEADERS, this.id);
    at += headers.copy(out, at);
    at = writeFrameHeader(out, at, body.length, DATA, trailers ? 0 : END_STREAM, this.id);
    at += body.copy(out, at);
    if (trailers) {
      at = writeFrameHeader(out, at, trailers.length, HEADERS, END_HEADERS | END_STREAM, this.id);
      trailers.copy(out, at);
    }
    session.queue(out);
    session.localEnd(this);
  }

  /** Queues body bytes; false when the producer should wait for ondrain. */
  write(chunk: Buffer): boolean {
    if (this.closed || this.localEnded || this.pendingEnd !== undefined) return false;
    if (chunk.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      this.session.pump(this);
    }
    if (this.pendingBytes >= STREAM_HIGH_WATER) {
      this.#wantDrain = true;
      return false;
    }
    return true;
  }

  /** The last body bytes (if any) then trailers (a header block), or END_STREAM alone without them. */
  end(chunk?: Buffer, trailers?: Buffer): void {
    if (this.closed || this.localEnded || this.pendingEnd !== undefined) return;
    if (chunk && chunk.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
    }
    this.pendingEnd = trailers ?? true;
    this.session.pump(this);
  }

  /** RST_STREAM: the stream ends here, whatever was queued. */
  reset(code: number): void {
    if (this.closed) return;
    this.session.rst(this.id, code);
    this.session.closeStream(this, code);
  }

  /** Called by the session as queued bytes leave. */
  drained(): void {
    if (this.#wantDrain && this.pendingBytes < STREAM_HIGH_WATER) {
      this.#wantDrain = false;
      this.ondrain?.();
    }
  }
}

interface HeaderBlock {
  streamId: number;
  endStream: boolean;
  parts: Buffer[];
  size: number;
}

export interface SessionHooks {
  onStream: (stream: H2Stream) => void;
  /** The connection is gone (after a GOAWAY either way, an error, or the socket closing). */
  onClose: (session: H2Session) => void;
}

const hasUpper = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return true;
  }
  return false;
};

/**
 * One request's header object, built as the decoder reads its block, with what makes the request
 * malformed (RFC 9113 §8.2, §8.3) or too large. One per session, started anew for each block: its `add`
 * is the decoder's callback, so a block costs no closure.
 */
class HeaderList {
  headers: H2Headers = Object.create(NO_PROPERTIES);
  error: StreamError | undefined;
  /** A pseudo-header was seen (trailers must have none). */
  pseudo = false;
  #regular = false;
  #size = 0;

  start(error: StreamError | undefined): void {
    this.headers = Object.create(NO_PROPERTIES);
    this.error = error;
    this.pseudo = false;
    this.#regular = false;
    this.#size = 0;
  }

  readonly add = (name: string, value: string): void => {
    if (this.error) return;
    this.#size += name.length + value.length + 32;
    if (this.#size > MAX_HEADER_LIST) {
      this.error = new StreamError(ENHANCE_YOUR_CALM);
      return;
    }
    if (hasUpper(name) || CONNECTION_HEADERS.has(name) || (name === 'te' && value !== 'trailers')) {
      this.error = new StreamError(PROTOCOL_ERROR);
      return;
    }
    const headers = this.headers;
    if (name.charCodeAt(0) === 58) {
      this.pseudo = true;
      if (this.#regular || !REQUEST_PSEUDO.has(name) || headers[name] !== undefined) {
        this.error = new StreamError(PROTOCOL_ERROR);
        return;
      }
      headers[name] = value;
      return;
    }
    this.#regular = true;
    const prev = headers[name];
    if (prev === undefined) headers[name] = value;
    else if (name === 'set-cookie') headers[name] = Array.isArray(prev) ? [...prev, value] : [prev, value];
    else headers[name] = `${prev}${name === 'cookie' ? '; ' : ', '}${value}`;
  };
}

export class H2Session {
  /**
   * Open streams. Replaced by a copy every STREAM_TABLE_REFRESH closes: V8 links a rehashed Map table to
   * its successor with its entries, so once the table is in the old generation every stream that passed
   * through it stays until a full GC (the reason for stream-tables.ts on Node's http2).
   */
  #streams = new Map<number, H2Stream>();
  #closedSinceCopy = 0;
  peerInitialWindow = DEFAULT_WINDOW;
  peerMaxFrame = DEFAULT_MAX_FRAME;
  closed = false;
  #sendWindow = DEFAULT_WINDOW;
  #recvWindow = CONNECTION_WINDOW;
  #recvUnacked = 0;
  #lastStreamId = 0;
  #goaway: number | undefined;
  #decoder = new HpackDecoder();
  #list = new HeaderList();
  #block: HeaderBlock | undefined;
  /** A stream error found before the block's CONTINUATION frames came (its priority names itself). */
  #blockError: StreamError | undefined;
  #blocked: H2Stream[] = [];
  #reset = new Set<number>();
  #prefaceSeen = 0;
  #rest: Buffer | undefined;
  #out: Buffer[] = [];
  #flushing = false;
  #paused = false;
  #ping: { payload: Buffer; done: (ok: boolean) => void } | undefined;

  constructor(
    readonly socket: Socket,
    private readonly hooks: SessionHooks,
  ) {
    socket.setNoDelay(true);
    this.queue(
      settingsFrame([
        [SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS],
        [SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW],
        [SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST],
        [SETTINGS_ENABLE_PUSH, 0],
      ]),
    );
    this.queue(u32Frame(WINDOW_UPDATE, 0, CONNECTION_WINDOW - DEFAULT_WINDOW));
    socket.on('data', (chunk: Buffer) => this.#read(chunk));
    socket.on('drain', () => {
      if (this.#paused) {
        this.#paused = false;
        socket.resume();
      }
    });
    socket.on('error', () => this.destroy());
    socket.on('close', () => this.destroy());
  }

  queue(frame: Buffer): void {
    if (this.socket.destroyed) return;
    this.#out.push(frame);
    if (!this.#flushing) {
      this.#flushing = true;
      setImmediate(() => this.flush());
    }
  }

  /** Everything queued in this turn leaves in one socket write. */
  flush(): void {
    this.#flushing = false;
    if (this.#out.length === 0 || this.socket.destroyed || this.socket.writableEnded) return;
    const out = this.#out;
    this.#out = [];
    const ok = this.socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
    if (!ok && this.socket.writableLength > SOCKET_HIGH_WATER && !this.#paused) {
      this.#paused = true;
      this.socket.pause();
    }
  }

  /** Takes n bytes of the connection's send window when it has them. */
  spend(n: number): boolean {
    if (this.#sendWindow < n) return false;
    this.#sendWindow -= n;
    return true;
  }

  /** Sends a PING; done(true) on its ACK, done(false) if the session closes first. One at a time. */
  ping(done: (ok: boolean) => void): boolean {
    if (this.closed || this.#ping) return false;
    const payload = Buffer.allocUnsafe(8);
    payload.writeDoubleBE(Date.now());
    this.#ping = { payload, done };
    this.queue(pingFrame(0, payload));
    return true;
  }

  /**
   * GOAWAY: no new streams; the connection closes once the open ones end. code other than NO_ERROR
   * ends it at once.
   */
  close(code = NO_ERROR): void {
    if (this.closed) return;
    if (this.#goaway === undefined) {
      this.#goaway = this.#lastStreamId;
      this.queue(goawayFrame(this.#lastStreamId, code));
    }
    if (code !== NO_ERROR) this.#end();
    else this.#endIfIdle();
  }

  /** Cuts the connection now: open streams end as cancelled. */
  destroy(): void {
    this.#teardown();
    this.socket.destroy();
  }

  /** Writes what is queued, then FIN; a peer that does not close its side in time is cut. */
  #end(): void {
    this.flush();
    this.#teardown();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  #teardown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.#streams.values()]) this.closeStream(s, CANCEL);
    this.#ping?.done(false);
    this.#ping = undefined;
    this.hooks.onClose(this);
  }

  #endIfIdle(): void {
    if (this.#goaway !== undefined && this.#streams.size === 0 && !this.closed) this.#end();
  }

  // -- reading ----------------------------------------------------------------------------------

  #read(chunk: Buffer): void {
    if (this.closed) return;
    const buf = this.#rest ? Buffer.concat([this.#rest, chunk]) : chunk;
    this.#rest = undefined;
    try {
      let at = 0;
      if (this.#prefaceSeen < PREFACE.length) {
        const n = Math.min(PREFACE.length - this.#prefaceSeen, buf.length);
        if (buf.compare(PREFACE, this.#prefaceSeen, this.#prefaceSeen + n, 0, n) !== 0)
          throw new ConnectionError(PROTOCOL_ERROR, 'not an HTTP/2 connection preface');
        this.#prefaceSeen += n;
        at = n;
      }
      while (!this.closed && buf.length - at >= FRAME_HEADER) {
        const length = buf.readUIntBE(at, 3);
        if (length > DEFAULT_MAX_FRAME)
          throw new ConnectionError(FRAME_SIZE_ERROR, 'frame larger than SETTINGS_MAX_FRAME_SIZE');
        if (buf.length - at - FRAME_HEADER < length) break;
        const type = buf[at + 3]!;
        const flags = buf[at + 4]!;
        const id = buf.readUInt32BE(at + 5) & 0x7fff_ffff;
        const payload = buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + length);
        at += FRAME_HEADER + length;
        this.#frame(type, flags, id, payload);
      }
      if (at < buf.length && !this.closed) this.#rest = buf.subarray(at);
    } catch (err) {
      const code =
        err instanceof ConnectionError
          ? err.code
          : err instanceof HpackError
            ? COMPRESSION_ERROR
            : PROTOCOL_ERROR;
      this.close(code === NO_ERROR ? PROTOCOL_ERROR : code);
      return;
    }
    this.flush();
  }

  #frame(type: number, flags: number, id: number, payload: Buffer): void {
    if (this.#block && type !== CONTINUATION)
      throw new ConnectionError(PROTOCOL_ERROR, 'header block interrupted');
    switch (type) {
      case DATA:
        this.#data(flags, id, payload);
        return;
      case HEADERS:
        this.#headers(flags, id, payload);
        return;
      case CONTINUATION:
        this.#continuation(flags, id, payload);
        return;
      case PRIORITY:
        if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (payload.length !== 5) this.#streamError(id, FRAME_SIZE_ERROR);
        else if ((payload.readUInt32BE(0) & 0x7fff_ffff) === id) this.#streamError(id, PROTOCOL_ERROR);
        return;
      case RST_STREAM:
        this.#rstStream(id, payload);
        return;
      case SETTINGS:
        this.#settings(flags, id, payload);
        return;
      case PUSH_PROMISE:
        throw new ConnectionError(PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
      case PING:
        this.#pinged(flags, id, payload);
        return;
      case GOAWAY:
        if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'GOAWAY on a stream');
        if (payload.length < 8) throw new ConnectionError(FRAME_SIZE_ERROR, 'short GOAWAY');
        // The client starts no new streams; the open ones finish.
        if (this.#goaway === undefined) this.#goaway = this.#lastStreamId;
        this.#endIfIdle();
        return;
      case WINDOW_UPDATE:
        this.#windowUpdate(id, payload);
        return;
      default:
        // Unknown frame types are ignored (RFC 9113 §4.1).
        return;
    }
  }

  /** Padding removed; a pad length that leaves no room is a connection error (§6.1, §6.2). */
  #unpad(flags: number, payload: Buffer): Buffer {
    if (!(flags & PADDED)) return payload;
    if (payload.length < 1) throw new ConnectionError(FRAME_SIZE_ERROR, 'padded frame without a pad length');
    const pad = payload[0]!;
    if (pad >= payload.length) throw new ConnectionError(PROTOCOL_ERROR, 'padding longer than the frame');
    return payload.subarray(1, payload.length - pad);
  }

  #data(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'DATA on stream 0');
    if (id > this.#lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'DATA on an idle stream');
    // Flow control counts the whole frame, padding included.
    this.#recvWindow -= payload.length;
    if (this.#recvWindow < 0) throw new ConnectionError(FLOW_CONTROL_ERROR, 'connection window exceeded');
    this.#recvUnacked += payload.length;
    if (this.#recvUnacked >= CONNECTION_WINDOW / 2) {
      this.queue(u32Frame(WINDOW_UPDATE, 0, this.#recvUnacked));
      this.#recvWindow += this.#recvUnacked;
      this.#recvUnacked = 0;
    }
    const data = this.#unpad(flags, payload);
    const s = this.#streams.get(id);
    if (!s) {
      this.#notOpen(id);
      return;
    }
    if (s.remoteEnded) {
      this.#streamError(id, STREAM_CLOSED);
      return;
    }
    s.received += data.length;
    // A body longer or shorter than its content-length is malformed (§8.1.1).
    if (s.contentLength >= 0 && s.received > s.contentLength) {
      this.#streamError(id, PROTOCOL_ERROR);
      return;
    }
    s.recvWindow -= payload.length;
    if (s.recvWindow < 0) {
      this.#streamError(id, FLOW_CONTROL_ERROR);
      return;
    }
    s.recvUnacked += payload.length;
    if (!(flags & END_STREAM) && s.recvUnacked >= STREAM_WINDOW / 2) {
      this.queue(u32Frame(WINDOW_UPDATE, id, s.recvUnacked));
      s.recvWindow += s.recvUnacked;
      s.recvUnacked = 0;
    }
    if (data.length > 0) s.ondata?.(data);
    if (flags & END_STREAM) this.#remoteEnd(s);
  }

  #headers(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'HEADERS on stream 0');
    let block = this.#unpad(flags, payload);
    if (flags & PRIORITY_FLAG) {
      if (block.length < 5) throw new ConnectionError(FRAME_SIZE_ERROR, 'HEADERS too short for its priority');
      if ((block.readUInt32BE(0) & 0x7fff_ffff) === id) {
        this.#afterBlock(id, flags, block.subarray(5), new StreamError(PROTOCOL_ERROR));
        return;
      }
      block = block.subarray(5);
    }
    this.#afterBlock(id, flags, block);
  }

  /** Collects the block (waiting for CONTINUATION when not END_HEADERS), then decodes it. */
  #afterBlock(id: number, flags: number, fragment: Buffer, error?: StreamError): void {
    const endStream = (flags & END_STREAM) !== 0;
    if (flags & END_HEADERS) {
      this.#decodeBlock(id, endStream, fragment, error);
      return;
    }
    // Copied: the socket's buffer is not kept past this read.
    this.#block = { streamId: id, endStream, parts: [Buffer.from(fragment)], size: fragment.length };
    this.#blockError = error;
  }

  #continuation(flags: number, id: number, payload: Buffer): void {
    const b = this.#block;
    if (!b || b.streamId !== id)
      throw new ConnectionError(PROTOCOL_ERROR, 'CONTINUATION without its HEADERS');
    b.size += payload.length;
    if (b.size > MAX_HEADER_BLOCK) throw new ConnectionError(ENHANCE_YOUR_CALM, 'header block too large');
    b.parts.push(Buffer.from(payload));
    if (!(flags & END_HEADERS)) return;
    this.#block = undefined;
    const error = this.#blockError;
    this.#blockError = undefined;
    this.#decodeBlock(b.streamId, b.endStream, Buffer.concat(b.parts), error);
  }

  #decodeBlock(id: number, endStream: boolean, block: Buffer, error?: StreamError): void {
    // Every block is decoded, even for a stream about to be refused: the decoder's table must follow.
    const list = this.#list;
    list.start(error);
    this.#decoder.decode(block, list.add);
    const { headers, error: malformed, pseudo } = list;
    const existing = this.#streams.get(id);
    if (existing) {
      // Trailers from the client: they end the stream and carry no pseudo-headers.
      if (existing.remoteEnded) {
        this.#streamError(id, STREAM_CLOSED);
        return;
      }
      if (!endStream || malformed || pseudo) {
        this.#streamError(id, malformed?.code ?? PROTOCOL_ERROR);
        return;
      }
      this.#remoteEnd(existing);
      return;
    }
    if (id <= this.#lastStreamId) {
      this.#notOpen(id);
      return;
    }
    if (id % 2 === 0) throw new ConnectionError(PROTOCOL_ERROR, 'even stream id from a client');
    this.#lastStreamId = id;
    if (this.#goaway !== undefined && id > this.#goaway) return;
    if (malformed) {
      this.#streamError(id, malformed.code);
      return;
    }
    if (
      headers[':method'] === undefined ||
      headers[':path'] === undefined ||
      headers[':scheme'] === undefined
    ) {
      this.#streamError(id, PROTOCOL_ERROR);
      return;
    }
    if (this.#streams.size >= MAX_CONCURRENT_STREAMS) {
      this.#streamError(id, REFUSED_STREAM);
      return;
    }
    const length = headers['content-length'];
    const contentLength =
      length === undefined ? -1 : /^\d{1,15}$/.test(length as string) ? Number(length) : Number.NaN;
    if (Number.isNaN(contentLength) || (endStream && contentLength > 0)) {
      this.#streamError(id, PROTOCOL_ERROR);
      return;
    }
    const s = new H2Stream(id, headers, this, contentLength);
    this.#streams.set(id, s);
    this.hooks.onStream(s);
    if (endStream) this.#remoteEnd(s);
  }

  #rstStream(id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    if (payload.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'RST_STREAM of the wrong size');
    if (id > this.#lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'RST_STREAM on an idle stream');
    const s = this.#streams.get(id);
    if (s) this.closeStream(s, payload.readUInt32BE(0));
  }

  #settings(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & ACK) {
      if (payload.length !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS of a wrong size');
    for (let at = 0; at < payload.length; at += 6) {
      const key = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      switch (key) {
        case SETTINGS_ENABLE_PUSH:
          if (value > 1) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS_ENABLE_PUSH above 1');
          break;
        case SETTINGS_INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW)
            throw new ConnectionError(FLOW_CONTROL_ERROR, 'SETTINGS_INITIAL_WINDOW_SIZE too large');
          const delta = value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          for (const s of this.#streams.values()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_WINDOW)
              throw new ConnectionError(FLOW_CONTROL_ERROR, 'stream window overflow');
          }
          if (delta > 0) for (const s of [...this.#streams.values()]) this.pump(s);
          break;
        }
        case SETTINGS_MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME || value > MAX_FRAME_LIMIT)
            throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS_MAX_FRAME_SIZE out of range');
          this.peerMaxFrame = value;
          break;
        case SETTINGS_HEADER_TABLE_SIZE:
          // Our encoder never indexes, so the peer's decoder table size does not matter.
          break;
        default:
          break;
      }
    }
    this.queue(SETTINGS_ACK);
  }

  #pinged(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'PING on a stream');
    if (payload.length !== 8) throw new ConnectionError(FRAME_SIZE_ERROR, 'PING of the wrong size');
    if (!(flags & ACK)) {
      this.queue(pingFrame(ACK, payload));
      return;
    }
    const p = this.#ping;
    if (p && payload.equals(p.payload)) {
      this.#ping = undefined;
      p.done(true);
    }
  }

  #windowUpdate(id: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'WINDOW_UPDATE of the wrong size');
    const inc = payload.readUInt32BE(0) & 0x7fff_ffff;
    if (id === 0) {
      if (inc === 0) throw new ConnectionError(PROTOCOL_ERROR, 'WINDOW_UPDATE of 0');
      this.#sendWindow += inc;
      if (this.#sendWindow > MAX_WINDOW)
        throw new ConnectionError(FLOW_CONTROL_ERROR, 'connection window overflow');
      const blocked = this.#blocked;
      this.#blocked = [];
      for (const s of blocked) {
        s.blocked = false;
        this.pump(s);
      }
      return;
    }
    if (id > this.#lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'WINDOW_UPDATE on an idle stream');
    const s = this.#streams.get(id);
    if (!s) return;
    if (inc === 0) {
      this.#streamError(id, PROTOCOL_ERROR);
      return;
    }
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      this.#streamError(id, FLOW_CONTROL_ERROR);
      return;
    }
    this.pump(s);
  }

  #streamError(id: number, code: number): void {
    const s = this.#streams.get(id);
    if (s) s.reset(code);
    else this.rst(id, code);
  }

  /** RST_STREAM, remembered: the client may send on the stream until it sees it. */
  rst(id: number, code: number): void {
    this.queue(u32Frame(RST_STREAM, id, code));
    this.#reset.add(id);
    if (this.#reset.size > RESET_MEMORY) this.#reset.delete(this.#reset.values().next().value as number);
  }

  /**
   * A frame for a stream that is not open: dropped when this side reset it lately or it came after
   * GOAWAY; otherwise the stream was closed by both sides (or never used) and the frame is an error.
   */
  #notOpen(id: number): void {
    if (this.#reset.has(id) || (this.#goaway !== undefined && id > this.#goaway)) return;
    throw new ConnectionError(STREAM_CLOSED, 'frame on a closed stream');
  }

  #remoteEnd(s: H2Stream): void {
    if (s.contentLength >= 0 && s.received !== s.contentLength) {
      this.#streamError(s.id, PROTOCOL_ERROR);
      return;
    }
    s.remoteEnded = true;
    s.onend?.();
    if (s.localEnded) this.closeStream(s, undefined);
  }

  // -- writing ----------------------------------------------------------------------------------

  /** Sends what the stream has queued as far as both windows allow, then its end when all is out. */
  pump(s: H2Stream): void {
    if (s.closed) return;
    while (s.pending.length > 0) {
      const room = Math.min(s.sendWindow, this.#sendWindow, this.peerMaxFrame);
      if (room <= 0) {
        if (this.#sendWindow <= 0 && !s.blocked) {
          s.blocked = true;
          this.#blocked.push(s);
        }
        return;
      }
      const head = s.pending[0]!;
      const piece = head.length <= room ? head : head.subarray(0, room);
      if (piece === head) s.pending.shift();
      else s.pending[0] = head.subarray(room);
      s.pendingBytes -= piece.length;
      s.sendWindow -= piece.length;
      this.#sendWindow -= piece.length;
      const last = s.pending.length === 0 && s.pendingEnd === true;
      this.queue(frameHeader(piece.length, DATA, last ? END_STREAM : 0, s.id));
      this.queue(piece);
      if (last) {
        s.pendingEnd = undefined;
        this.localEnd(s);
        return;
      }
    }
    s.drained();
    const end = s.pendingEnd;
    if (end === undefined) return;
    s.pendingEnd = undefined;
    if (end === true) this.queue(frameHeader(0, DATA, END_STREAM, s.id));
    else this.queue(headerFrames(s.id, end, true, this.peerMaxFrame));
    this.localEnd(s);
  }

  /** This side sent END_STREAM: closed when the client has ended too, else the rest of its body is refused. */
  localEnd(s: H2Stream): void {
    s.localEnded = true;
    if (s.remoteEnded) {
      this.closeStream(s, undefined);
      return;
    }
    // Answered before the request ended (an early error): RST_STREAM NO_ERROR stops the upload (§8.1).
    this.rst(s.id, NO_ERROR);
    this.closeStream(s, undefined);
  }

  closeStream(s: H2Stream, code: number | undefined): void {
    if (s.closed) return;
    s.closed = true;
    s.rstCode = code;
    s.pending = [];
    s.pendingBytes = 0;
    this.#streams.delete(s.id);
    if (++this.#closedSinceCopy >= STREAM_TABLE_REFRESH) {
      this.#streams = new Map(this.#streams);
      this.#closedSinceCopy = 0;
    }
    s.onclose?.();
    this.#endIfIdle();
  }
}

/** Server keepalive pings find dead client connections (a vanished Envoy) without waiting for the OS. */
export const KEEPALIVE_TIME_MS = 60_000;
export const KEEPALIVE_TIMEOUT_MS = 20_000;

/** HTTP/2 keepalive: a session that does not answer a ping in time is cut. */
export const keepAlive = (session: H2Session): NodeJS.Timeout =>
  setInterval(() => {
    const deadline = setTimeout(() => session.destroy(), KEEPALIVE_TIMEOUT_MS).unref();
    const sent = session.ping((ok) => {
      clearTimeout(deadline);
      if (!ok) session.destroy();
    });
    if (!sent) clearTimeout(deadline);
  }, KEEPALIVE_TIME_MS).unref();
