/**
 * Our HTTP/2 server layer over a real socket, driven frame by frame by a raw client: what Envoy,
 * grpc-js and h2load rely on (settings, pings, padding, CONTINUATION, flow control, resets, GOAWAY)
 * and what a broken client may send (each answered with the RFC 9113 error, never a crash).
 */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ACK,
  CANCEL,
  COMPRESSION_ERROR,
  CONTINUATION,
  DATA,
  END_HEADERS,
  END_STREAM,
  ENHANCE_YOUR_CALM,
  FRAME_SIZE_ERROR,
  frameHeader,
  GOAWAY,
  HEADERS,
  NO_ERROR,
  PADDED,
  PING,
  PREFACE,
  PROTOCOL_ERROR,
  pingFrame,
  RST_STREAM,
  SETTINGS,
  SETTINGS_INITIAL_WINDOW_SIZE,
  SETTINGS_MAX_CONCURRENT_STREAMS,
  settingsFrame,
  u32Frame,
  WINDOW_UPDATE,
} from '../../src/transport/h2-frames.js';
import {
  type H2Headers,
  H2Session,
  type H2Stream,
  MAX_CONCURRENT_STREAMS,
  STREAM_TABLE_REFRESH,
} from '../../src/transport/h2-session.js';
import { encodeHeaders } from '../../src/transport/hpack.js';
import { dataFrame, headersFrame, RawClient, request } from '../harness/raw-h2.js';

const OK = encodeHeaders([[':status', '200']]);
const TRAILERS = encodeHeaders([['x-done', 'yes']]);

let server: Server;
let port: number;
const sessions = new Set<H2Session>();
const seen: { headers: H2Headers; body: Buffer }[] = [];
const closes: { path: string; rstCode: number | undefined }[] = [];

/** /echo answers the body back; /size/N answers N bytes (/answer/N the same in one answer() call); /early answers before the body; /hold never does. */
const onStream = (s: H2Stream): void => {
  const path = s.headers[':path'] as string;
  const chunks: Buffer[] = [];
  s.ondata = (c) => chunks.push(Buffer.from(c));
  s.onclose = () => closes.push({ path, rstCode: s.rstCode });
  if (path === '/early') {
    s.respond(encodeHeaders([[':status', '413']]), true);
    return;
  }
  s.onend = () => {
    const body = Buffer.concat(chunks);
    seen.push({ headers: s.headers, body });
    if (path === '/hold') return;
    const whole = /^\/answer\/(\d+)$/.exec(path);
    if (whole) {
      s.answer(OK, Buffer.alloc(Number(whole[1]), 5), TRAILERS);
      return;
    }
    s.respond(OK);
    const size = /^\/size\/(\d+)$/.exec(path);
    s.end(size ? Buffer.alloc(Number(size[1]), 7) : body, TRAILERS);
  };
};

beforeAll(async () => {
  server = createServer((socket) => {
    const s = new H2Session(socket, { onStream, onClose: (x) => sessions.delete(x) });
    sessions.add(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});
afterAll(async () => {
  for (const s of sessions) s.destroy();
  await new Promise((r) => server.close(r));
});

/** Opens a client and completes the settings exchange. */
const ready = async (settings: [number, number][] = []): Promise<RawClient> => {
  const c = await RawClient.open(port);
  c.send(settingsFrame(settings));
  await c.next((f) => f.type === SETTINGS && !(f.flags & ACK));
  await c.next((f) => f.type === SETTINGS && (f.flags & ACK) !== 0);
  return c;
};

const goaway = async (c: RawClient): Promise<number> => {
  const f = await c.next((x) => x.type === GOAWAY);
  await c.closed();
  return f.payload.readUInt32BE(4);
};

describe('HTTP/2 session', () => {
  it('opens with its SETTINGS and a connection window update, and acknowledges the client’s', async () => {
    const c = await RawClient.open(port);
    const s = await c.next((f) => f.type === SETTINGS);
    const values = new Map<number, number>();
    for (let at = 0; at < s.payload.length; at += 6)
      values.set(s.payload.readUInt16BE(at), s.payload.readUInt32BE(at + 2));
    expect(values.get(SETTINGS_MAX_CONCURRENT_STREAMS)).toBe(MAX_CONCURRENT_STREAMS);
    expect(values.get(SETTINGS_INITIAL_WINDOW_SIZE)).toBeGreaterThanOrEqual(4 * 1024 * 1024 + 5);
    const wu = await c.next((f) => f.type === WINDOW_UPDATE && f.id === 0);
    expect(wu.payload.readUInt32BE(0)).toBeGreaterThan(0);
    c.send(settingsFrame([]));
    await c.next((f) => f.type === SETTINGS && f.flags === ACK && f.payload.length === 0);
    c.close();
  });

  it('answers a request: headers, body, trailers, the stream closed normally', async () => {
    const c = await ready();
    c.send(headersFrame(1, request('/echo')), dataFrame(1, Buffer.from('hello'), END_STREAM));
    const h = await c.next((f) => f.type === HEADERS && f.id === 1);
    expect(c.headersOf(h)[':status']).toBe('200');
    const d = await c.next((f) => f.type === DATA && f.id === 1);
    expect(d.payload.toString()).toBe('hello');
    const t = await c.next((f) => f.type === HEADERS && f.id === 1);
    expect(t.flags & END_STREAM).toBe(END_STREAM);
    expect(c.headersOf(t)['x-done']).toBe('yes');
    expect(closes.find((x) => x.path === '/echo')?.rstCode).toBeUndefined();
    c.close();
  });

  it('keeps headers named like object properties as plain headers, and joins repeated ones', async () => {
    const c = await ready();
    const extra: [string, string][] = [
      ['__proto__', 'p'],
      ['constructor', 'c'],
      ['x-twice', 'a'],
      ['x-twice', 'b'],
      ['cookie', 'a=1'],
      ['cookie', 'b=2'],
    ];
    c.send(headersFrame(55, request('/echo', extra), END_HEADERS | END_STREAM));
    await c.next((f) => f.type === HEADERS && f.id === 55);
    const h = seen.at(-1)!.headers;
    expect(Object.entries(h)).toContainEqual(['__proto__', 'p']);
    expect(h.constructor).toBe('c');
    expect(h.toString).toBeUndefined();
    expect(h['x-twice']).toBe('a, b');
    expect(h.cookie).toBe('a=1; b=2');
    c.close();
  });

  it('reads padded HEADERS, CONTINUATION frames and padded DATA', async () => {
    const c = await ready();
    const block = request('/echo', [['x-long', 'v'.repeat(300)]]);
    const padded = Buffer.concat([Buffer.from([4]), block.subarray(0, 100), Buffer.alloc(4)]);
    c.send(
      Buffer.concat([frameHeader(padded.length, HEADERS, PADDED, 3), padded]),
      Buffer.concat([frameHeader(100, CONTINUATION, 0, 3), block.subarray(100, 200)]),
      Buffer.concat([frameHeader(block.length - 200, CONTINUATION, END_HEADERS, 3), block.subarray(200)]),
    );
    const body = Buffer.concat([Buffer.from([2]), Buffer.from('abc'), Buffer.alloc(2)]);
    c.send(Buffer.concat([frameHeader(body.length, DATA, PADDED | END_STREAM, 3), body]));
    const d = await c.next((f) => f.type === DATA && f.id === 3);
    expect(d.payload.toString()).toBe('abc');
    expect(seen.at(-1)?.headers['x-long']).toBe('v'.repeat(300));
    c.close();
  });

  it('answers PING with its payload', async () => {
    const c = await ready();
    c.send(pingFrame(0, Buffer.from('12345678')));
    const p = await c.next((f) => f.type === PING);
    expect(p.flags).toBe(ACK);
    expect(p.payload.toString()).toBe('12345678');
    c.close();
  });

  it('sends its own PING and hears the ACK', async () => {
    const c = await ready();
    const session = [...sessions].at(-1)!;
    const acked = new Promise<boolean>((r) => session.ping(r));
    const p = await c.next((f) => f.type === PING && f.flags === 0);
    c.send(pingFrame(ACK, p.payload));
    expect(await acked).toBe(true);
    c.close();
  });

  it('a PING left unanswered reports false when the connection goes, and only one is out at a time', async () => {
    const c = await ready();
    const session = [...sessions].at(-1)!;
    const answered = new Promise<boolean>((r) => session.ping(r));
    expect(session.ping(() => {})).toBe(false);
    await c.next((f) => f.type === PING && f.flags === 0);
    c.close();
    expect(await answered).toBe(false);
  });

  it('keeps to the client’s windows and frame size: data waits for WINDOW_UPDATE', async () => {
    const c = await ready([[SETTINGS_INITIAL_WINDOW_SIZE, 1000]]);
    c.send(headersFrame(5, request('/size/40000'), END_HEADERS | END_STREAM));
    await c.next((f) => f.type === HEADERS && f.id === 5);
    let got = 0;
    const first = await c.next((f) => f.type === DATA && f.id === 5);
    got += first.payload.length;
    expect(first.payload.length).toBe(1000);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.frames.some((f) => f.type === DATA)).toBe(false);
    // Stream window opened, connection window (65,535) still caps the total.
    c.send(u32Frame(WINDOW_UPDATE, 5, 100_000));
    got += await c.bodyUntilTrailers(5);
    expect(got).toBe(40_000);
    c.close();
  });

  it('answer(): headers, body and trailers at once when the windows allow, else as flow control lets them', async () => {
    const c = await ready([[SETTINGS_INITIAL_WINDOW_SIZE, 1000]]);
    c.send(headersFrame(1, request('/answer/600'), END_HEADERS | END_STREAM));
    const h = await c.next((f) => f.id === 1);
    expect(h.type).toBe(HEADERS);
    const d = await c.next((f) => f.id === 1);
    expect([d.type, d.payload.length]).toEqual([DATA, 600]);
    const t = await c.next((f) => f.id === 1);
    expect([t.type, t.flags & END_STREAM]).toEqual([HEADERS, END_STREAM]);
    // 5,000 bytes against a 1,000-byte stream window: the first 1,000, the rest after WINDOW_UPDATE.
    c.send(headersFrame(3, request('/answer/5000'), END_HEADERS | END_STREAM));
    await c.next((f) => f.type === HEADERS && f.id === 3);
    expect((await c.next((f) => f.type === DATA && f.id === 3)).payload.length).toBe(1000);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.frames.some((f) => f.id === 3)).toBe(false);
    c.send(u32Frame(WINDOW_UPDATE, 3, 10_000));
    expect(1000 + (await c.bodyUntilTrailers(3))).toBe(5000);
    c.close();
  });

  it('holds data past the connection window until the client opens it', async () => {
    const c = await ready([[SETTINGS_INITIAL_WINDOW_SIZE, 1_000_000]]);
    c.send(headersFrame(7, request('/size/100000'), END_HEADERS | END_STREAM));
    let got = 0;
    while (got < 65_535) got += (await c.next((f) => f.type === DATA && f.id === 7)).payload.length;
    expect(got).toBe(65_535);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.frames.some((f) => f.type === DATA)).toBe(false);
    c.send(u32Frame(WINDOW_UPDATE, 0, 50_000));
    while (got < 100_000) got += (await c.next((f) => f.type === DATA && f.id === 7)).payload.length;
    await c.next((f) => f.type === HEADERS && f.id === 7 && (f.flags & END_STREAM) !== 0);
    c.close();
  });

  it('an answer sent before the request ends is followed by RST_STREAM NO_ERROR', async () => {
    const c = await ready();
    c.send(headersFrame(9, request('/early')));
    const h = await c.next((f) => f.type === HEADERS && f.id === 9);
    expect(h.flags & END_STREAM).toBe(END_STREAM);
    const r = await c.next((f) => f.type === RST_STREAM && f.id === 9);
    expect(r.payload.readUInt32BE(0)).toBe(NO_ERROR);
    // Late DATA on the closed stream is dropped; the connection goes on.
    c.send(
      dataFrame(9, Buffer.from('late'), END_STREAM),
      headersFrame(11, request('/echo'), END_HEADERS | END_STREAM),
    );
    await c.next((f) => f.type === HEADERS && f.id === 11);
    c.close();
  });

  it('a client RST_STREAM ends the stream with its code', async () => {
    const c = await ready();
    c.send(headersFrame(13, request('/hold')), dataFrame(13, Buffer.from('x'), END_STREAM));
    await new Promise((r) => setTimeout(r, 30));
    c.send(u32Frame(RST_STREAM, 13, CANCEL));
    await new Promise((r) => setTimeout(r, 30));
    expect(closes.filter((x) => x.path === '/hold').at(-1)?.rstCode).toBe(CANCEL);
    c.close();
  });

  it('refuses a malformed request on its stream only (upper-case name, missing :path, connection header)', async () => {
    const c = await ready();
    const bad = [
      encodeHeaders([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/echo'],
        ['X-Upper', '1'],
      ]),
      encodeHeaders([
        [':method', 'POST'],
        [':scheme', 'http'],
      ]),
      encodeHeaders([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/echo'],
        ['connection', 'close'],
      ]),
      encodeHeaders([
        ['x-first', '1'],
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/echo'],
      ]),
    ];
    let id = 15;
    for (const block of bad) {
      c.send(headersFrame(id, block, END_HEADERS | END_STREAM));
      const r = await c.next((f) => f.type === RST_STREAM && f.id === id);
      expect(r.payload.readUInt32BE(0)).toBe(PROTOCOL_ERROR);
      id += 2;
    }
    c.send(headersFrame(id, request('/echo'), END_HEADERS | END_STREAM));
    await c.next((f) => f.type === HEADERS && f.id === id);
    c.close();
  });

  it('refuses a request whose headers decode past the list limit, however small the block', async () => {
    const c = await ready();
    // One 4,000-byte value added to the dynamic table, then referenced 20 times: ~80 KB from ~4 KB.
    const value = 'v'.repeat(4000);
    const indexed = Buffer.concat([
      Buffer.from([0x40, 5]),
      Buffer.from('x-big'),
      Buffer.from([0x7f, 0xa1, 0x1e]),
      Buffer.from(value),
      Buffer.alloc(20, 0xbe),
    ]);
    c.send(headersFrame(51, Buffer.concat([request('/echo'), indexed]), END_HEADERS | END_STREAM));
    const r = await c.next((f) => f.type === RST_STREAM && f.id === 51);
    expect(r.payload.readUInt32BE(0)).toBe(ENHANCE_YOUR_CALM);
    // The table stays in step: a later request referencing the entry once is answered.
    c.send(
      headersFrame(53, Buffer.concat([request('/echo'), Buffer.from([0xbe])]), END_HEADERS | END_STREAM),
    );
    await c.next((f) => f.type === HEADERS && f.id === 53);
    expect(seen.at(-1)?.headers['x-big']).toBe(value);
    c.close();
  });

  it('answers every stream while the open-stream table is replaced (open streams carried over)', async () => {
    const c = await ready();
    let id = 1;
    // Each batch opens 13 streams, then ends them one by one: the table is copied while others are open.
    for (let batch = 0; batch < Math.ceil((STREAM_TABLE_REFRESH * 2.5) / 13); batch++) {
      const ids = Array.from({ length: 13 }, (_, i) => id + 2 * i);
      id += 26;
      c.send(...ids.map((i) => headersFrame(i, request('/echo'))));
      c.send(...ids.map((i) => dataFrame(i, Buffer.from(`body ${i}`), END_STREAM)));
      for (const i of ids) {
        const d = await c.next((f) => f.type === DATA && f.id === i);
        expect(d.payload.toString()).toBe(`body ${i}`);
      }
    }
    c.close();
  });

  it.each([
    [
      'a wrong connection preface',
      async (c: RawClient) => c,
      PROTOCOL_ERROR,
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
    ],
    [
      'a frame above the maximum frame size',
      async (c: RawClient) => c.send(dataFrame(1, Buffer.alloc(16_385))),
      FRAME_SIZE_ERROR,
      PREFACE,
    ],
    [
      'HEADERS on stream 0',
      async (c: RawClient) => c.send(headersFrame(0, request('/echo'))),
      PROTOCOL_ERROR,
      PREFACE,
    ],
    [
      'an even stream id',
      async (c: RawClient) => c.send(headersFrame(2, request('/echo'))),
      PROTOCOL_ERROR,
      PREFACE,
    ],
    [
      'SETTINGS of a length not a multiple of 6',
      async (c: RawClient) => c.send(Buffer.concat([frameHeader(5, SETTINGS, 0, 0), Buffer.alloc(5)])),
      FRAME_SIZE_ERROR,
      PREFACE,
    ],
    [
      'a header block interrupted by another frame',
      async (c: RawClient) => c.send(headersFrame(1, request('/echo'), 0), pingFrame(0, Buffer.alloc(8))),
      PROTOCOL_ERROR,
      PREFACE,
    ],
    [
      'a header block HPACK cannot decode',
      async (c: RawClient) =>
        c.send(headersFrame(1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))),
      COMPRESSION_ERROR,
      PREFACE,
    ],
    [
      'DATA on a stream never opened',
      async (c: RawClient) => c.send(dataFrame(101, Buffer.from('x'))),
      PROTOCOL_ERROR,
      PREFACE,
    ],
    [
      'a WINDOW_UPDATE of 0 on the connection',
      async (c: RawClient) => c.send(u32Frame(WINDOW_UPDATE, 0, 0)),
      PROTOCOL_ERROR,
      PREFACE,
    ],
  ] as const)('ends the connection with GOAWAY on %s', async (_name, act, code, preface) => {
    const c = await RawClient.open(port, preface);
    await act(c);
    expect(await goaway(c)).toBe(code);
  });

  it('close() sends GOAWAY, lets the open stream finish, then closes the connection', async () => {
    const c = await ready();
    c.send(headersFrame(1, request('/echo')));
    await new Promise((r) => setTimeout(r, 30));
    const session = [...sessions].at(-1)!;
    session.close();
    const g = await c.next((f) => f.type === GOAWAY);
    expect(g.payload.readUInt32BE(0)).toBe(1);
    expect(g.payload.readUInt32BE(4)).toBe(NO_ERROR);
    expect(c.ended).toBe(false);
    c.send(dataFrame(1, Buffer.from('bye'), END_STREAM));
    const d = await c.next((f) => f.type === DATA && f.id === 1);
    expect(d.payload.toString()).toBe('bye');
    await c.closed();
  });
});
