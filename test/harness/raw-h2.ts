/** A raw HTTP/2 client for protocol tests: writes frames as given, reads the server's frame by frame. */
import { connect, type Socket } from 'node:net';
import {
  DATA,
  END_HEADERS,
  END_STREAM,
  frameHeader,
  HEADERS,
  PREFACE,
} from '../../src/transport/h2-frames.js';
import { encodeHeaders, HpackDecoder } from '../../src/transport/hpack.js';

export interface Frame {
  type: number;
  flags: number;
  id: number;
  payload: Buffer;
}

/** A client that writes raw frames and reads the server's, frame by frame. */
export class RawClient {
  frames: Frame[] = [];
  ended = false;
  #rest = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  readonly decoder = new HpackDecoder();

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      let buf = Buffer.concat([this.#rest, chunk]);
      while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
        const length = buf.readUIntBE(0, 3);
        this.frames.push({
          type: buf[3]!,
          flags: buf[4]!,
          id: buf.readUInt32BE(5) & 0x7fff_ffff,
          payload: Buffer.from(buf.subarray(9, 9 + length)),
        });
        buf = buf.subarray(9 + length);
      }
      this.#rest = buf;
      this.#wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  static async open(port: number, preface: Buffer = PREFACE): Promise<RawClient> {
    const socket = connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    const c = new RawClient(socket);
    socket.write(preface);
    return c;
  }

  send(...frames: Buffer[]): void {
    this.socket.write(Buffer.concat(frames));
  }

  /** The first frame (removed from the list) that matches, waiting up to 2 s. */
  async next(match: (f: Frame) => boolean): Promise<Frame> {
    const deadline = Date.now() + 2000;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      if (this.ended) throw new Error('connection closed before the frame came');
      if (Date.now() > deadline) throw new Error('no such frame in time');
      await new Promise<void>((r) => {
        this.#wake = r;
        setTimeout(r, 50);
      });
    }
  }

  /** A stream's DATA bytes up to its closing HEADERS (END_STREAM), no frame above the default max frame size. */
  async bodyUntilTrailers(id: number): Promise<number> {
    let got = 0;
    for (;;) {
      const f = await this.next((x) => (x.type === DATA || x.type === HEADERS) && x.id === id);
      if (f.type === HEADERS) {
        if (!(f.flags & END_STREAM)) throw new Error(`stream ${id}: HEADERS without END_STREAM`);
        return got;
      }
      if (f.payload.length > 16_384)
        throw new Error(`stream ${id}: a DATA frame of ${f.payload.length} bytes`);
      got += f.payload.length;
    }
  }

  async closed(): Promise<void> {
    while (!this.ended) await new Promise((r) => setTimeout(r, 10));
  }

  headersOf(f: Frame): Record<string, string> {
    const out: Record<string, string> = {};
    this.decoder.decode(f.payload, (n, v) => {
      out[n] = v;
    });
    return out;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A POST request's header block. */
export const request = (path: string, extra: [string, string][] = []): Buffer =>
  encodeHeaders([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'test'],
    ['content-type', 'application/grpc'],
    ...extra,
  ]);

export const headersFrame = (id: number, block: Buffer, flags = END_HEADERS): Buffer =>
  Buffer.concat([frameHeader(block.length, HEADERS, flags, id), block]);
export const dataFrame = (id: number, data: Buffer, flags = 0): Buffer =>
  Buffer.concat([frameHeader(data.length, DATA, flags, id), data]);
