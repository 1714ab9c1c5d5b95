/**
 * A gRPC client for the load generator that writes pre-encoded HTTP/2 frames over a socket and reads
 * only what a unary answer needs: h2load's cost per call, from Node, with a body per request. h2load
 * posts one fixed body, so it cannot carry scenario (d)'s 10,000 keys, and grpc-js tops out at a
 * fraction of the server's rate on this machine (the figure would be the client's).
 *
 * Flow control: the client opens its receive windows to the maximum once; the bodies it sends are
 * bounded by the calls in flight, which must fit the peer's initial 64 KB windows (checked).
 */
import { connect, type Socket } from 'node:net';
import {
  ACK,
  DATA,
  DEFAULT_WINDOW,
  END_HEADERS,
  END_STREAM,
  FRAME_HEADER,
  GOAWAY,
  HEADERS,
  MAX_WINDOW,
  PING,
  PREFACE,
  pingFrame,
  RST_STREAM,
  SETTINGS,
  SETTINGS_ACK,
  SETTINGS_ENABLE_PUSH,
  SETTINGS_INITIAL_WINDOW_SIZE,
  settingsFrame,
  u32Frame,
  WINDOW_UPDATE,
  writeFrameHeader,
} from '../src/transport/h2-frames.js';
import { encodeHeaders, HpackDecoder } from '../src/transport/hpack.js';

/** err: why the call failed (null: an answer); overLimit: the answer's overall_code was OVER_LIMIT. */
export type Done = (err: string | null, overLimit: boolean) => void;

interface Call {
  done: Done;
  status: string | undefined;
  overLimit: boolean;
}

const OVER_LIMIT = 2;
/** Received bytes after which the connection window is topped up again. */
const REFILL_AT = 1 << 30;

/** One HTTP/2 connection carrying unary gRPC calls. */
export class FrameConnection {
  readonly #socket: Socket;
  readonly #calls = new Map<number, Call>();
  readonly #decoder = new HpackDecoder();
  readonly #headers: Buffer;
  #nextId = 1;
  #out: Buffer[] = [];
  #flushing = false;
  #rest: Buffer | undefined;
  #received = 0;
  #gone: string | undefined;

  constructor(host: string, port: number, path: string, maxInFlightBytes: number) {
    if (maxInFlightBytes > DEFAULT_WINDOW) {
      throw new Error(
        `h2frames: ${maxInFlightBytes} bytes in flight on one connection would need the server's flow control (at most ${DEFAULT_WINDOW}): use more --connections or a lower --concurrency`,
      );
    }
    this.#headers = encodeHeaders([
      [':method', 'POST'],
      [':scheme', 'http'],
      [':path', path],
      [':authority', `${host}:${port}`],
      ['content-type', 'application/grpc'],
      ['te', 'trailers'],
    ]);
    this.#socket = connect(port, host);
    this.#socket.setNoDelay(true);
    this.#socket.on('data', (chunk: Buffer) => this.#read(chunk));
    this.#socket.on('error', (err) => this.#fail(err.message));
    this.#socket.on('close', () => this.#fail('connection closed'));
    this.#queue(
      Buffer.concat([
        PREFACE,
        settingsFrame([
          [SETTINGS_ENABLE_PUSH, 0],
          [SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW],
        ]),
        u32Frame(WINDOW_UPDATE, 0, MAX_WINDOW - DEFAULT_WINDOW),
      ]),
    );
  }

  /** Sends one call: HEADERS then DATA (the gRPC-framed message) with END_STREAM, in one buffer. */
  call(message: Buffer, done: Done): void {
    if (this.#gone) {
      done(this.#gone, false);
      return;
    }
    const id = this.#nextId;
    this.#nextId += 2;
    const headers = this.#headers;
    const out = Buffer.allocUnsafe(2 * FRAME_HEADER + headers.length + message.length);
    let at = writeFrameHeader(out, 0, headers.length, HEADERS, END_HEADERS, id);
    at += headers.copy(out, at);
    at = writeFrameHeader(out, at, message.length, DATA, END_STREAM, id);
    message.copy(out, at);
    this.#calls.set(id, { done, status: undefined, overLimit: false });
    this.#queue(out);
  }

  close(): void {
    this.#socket.destroy();
  }

  /** Everything a turn queues leaves in one write. */
  #queue(b: Buffer): void {
    this.#out.push(b);
    if (this.#flushing) return;
    this.#flushing = true;
    process.nextTick(() => {
      this.#flushing = false;
      const out = this.#out;
      this.#out = [];
      if (!this.#socket.destroyed) this.#socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
    });
  }

  #read(chunk: Buffer): void {
    const buf = this.#rest ? Buffer.concat([this.#rest, chunk]) : chunk;
    let at = 0;
    while (buf.length - at >= FRAME_HEADER) {
      const length = buf.readUIntBE(at, 3);
      if (buf.length - at < FRAME_HEADER + length) break;
      const type = buf[at + 3]!;
      const flags = buf[at + 4]!;
      const id = buf.readUInt32BE(at + 5) & 0x7fff_ffff;
      this.#frame(type, flags, id, buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + length));
      at += FRAME_HEADER + length;
    }
    this.#rest = at < buf.length ? buf.subarray(at) : undefined;
  }

  #frame(type: number, flags: number, id: number, payload: Buffer): void {
    switch (type) {
      case DATA: {
        this.#received += payload.length;
        if (this.#received >= REFILL_AT) {
          this.#queue(u32Frame(WINDOW_UPDATE, 0, this.#received));
          this.#received = 0;
        }
        const c = this.#calls.get(id);
        // The answer's first field is overall_code (tag 0x08) after the 5-byte message prefix.
        if (c && payload.length > 6 && payload[5] === 0x08) c.overLimit = payload[6] === OVER_LIMIT;
        if (flags & END_STREAM) this.#end(id, 'no trailers');
        return;
      }
      case HEADERS: {
        if (!(flags & END_HEADERS)) {
          this.#fail('a header block in CONTINUATION frames');
          return;
        }
        const c = this.#calls.get(id);
        // Every block is decoded: the peer's encoder may index into the shared dynamic table.
        this.#decoder.decode(payload, (name, value) => {
          if (c && name === 'grpc-status') c.status = value;
        });
        if (flags & END_STREAM) this.#end(id, undefined);
        return;
      }
      case RST_STREAM:
        this.#end(id, `RST_STREAM ${payload.readUInt32BE(0)}`);
        return;
      case SETTINGS:
        if (!(flags & ACK)) this.#queue(SETTINGS_ACK);
        return;
      case PING:
        if (!(flags & ACK)) this.#queue(pingFrame(ACK, payload));
        return;
      case GOAWAY:
        this.#fail(`GOAWAY ${payload.readUInt32BE(4)}`);
        return;
    }
  }

  #end(id: number, error: string | undefined): void {
    const c = this.#calls.get(id);
    if (!c) return;
    this.#calls.delete(id);
    if (error) c.done(error, false);
    else if (c.status === '0') c.done(null, c.overLimit);
    else c.done(`grpc-status ${c.status}`, false);
  }

  #fail(why: string): void {
    if (this.#gone) return;
    this.#gone = why;
    const calls = [...this.#calls.values()];
    this.#calls.clear();
    for (const c of calls) c.done(why, false);
    this.#socket.destroy();
  }
}
