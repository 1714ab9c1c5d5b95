/** The gRPC wire rules of the unary path: framing, grpc-timeout, compressed messages. */
import { deflateSync, gzipSync } from 'node:zlib';
import { Code } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import {
  decompress,
  encodeMessage,
  frame,
  MAX_MESSAGE_BYTES,
  parseTimeout,
  unframe,
} from '../../src/transport/grpc-wire.js';

const prefixed = (flag: number, payload: Buffer, length = payload.length): Buffer => {
  const head = Buffer.alloc(5);
  head[0] = flag;
  head.writeUInt32BE(length, 1);
  return Buffer.concat([head, payload]);
};

describe('parseTimeout', () => {
  it.each([
    ['20m', 20],
    ['1S', 1000],
    ['2M', 120_000],
    ['1H', 3_600_000],
    ['1500u', 2],
    ['999999n', 1],
    ['99999999m', 99_999_999],
  ])('%s is %i ms', (v, ms) => expect(parseTimeout(v)).toBe(ms));

  it.each(['', '20', 'm', '20x', '123456789m', '-1m', '1.5S', '20 m'])('%j is malformed', (v) =>
    expect(parseTimeout(v)).toBeUndefined(),
  );
});

describe('frame / unframe', () => {
  it('round-trips a message', () => {
    const msg = Buffer.from('hello');
    const f = frame(msg);
    expect([...f.subarray(0, 5)]).toEqual([0, 0, 0, 0, 5]);
    expect(unframe(f, '/s/M')).toEqual({ message: msg, compressed: false });
  });

  it('keeps an empty message (a request with every field at its default)', () => {
    expect(unframe(frame(new Uint8Array()), '/s/M')).toEqual({ message: Buffer.alloc(0), compressed: false });
  });

  it('reports the compressed flag', () => {
    expect(unframe(prefixed(1, Buffer.from('x')), '/s/M')).toMatchObject({ compressed: true });
  });

  it.each([
    ['no message', Buffer.alloc(0), Code.Unimplemented, /no request message for \/s\/M/],
    ['a cut prefix', Buffer.from([0, 0, 0]), Code.Internal, /truncated message prefix/],
    ['a cut message', prefixed(0, Buffer.from('ab'), 3), Code.Internal, /truncated message/],
    [
      'two messages',
      Buffer.concat([frame(Buffer.from('a')), frame(Buffer.from('b'))]),
      Code.Unimplemented,
      /second/,
    ],
    [
      'a length over the limit',
      prefixed(0, Buffer.alloc(0), MAX_MESSAGE_BYTES + 1),
      Code.ResourceExhausted,
      /larger than max/,
    ],
  ])('%s ends the call', (_name, body, code, message) => {
    const u = unframe(body, '/s/M');
    expect(u).toMatchObject({ status: { code } });
    expect('status' in u && u.status.message).toMatch(message);
  });
});

describe('decompress', () => {
  const text = Buffer.from('the same bytes back');
  it.each([
    ['gzip', gzipSync(text)],
    ['deflate', deflateSync(text)],
  ])('%s', async (encoding, bytes) => {
    expect(await decompress(bytes, encoding)).toEqual({ message: text, compressed: false });
  });

  it('refuses an encoding it does not know, naming it', async () => {
    expect(await decompress(Buffer.from('x'), 'snappy')).toEqual({
      status: { code: Code.Unimplemented, message: 'message compressed with unsupported encoding "snappy"' },
    });
  });

  it('refuses bytes that are not what the header says', async () => {
    expect(await decompress(Buffer.from('not gzip'), 'gzip')).toMatchObject({
      status: { code: Code.Internal },
    });
  });

  it('refuses a message that inflates past the limit', async () => {
    const bomb = gzipSync(Buffer.alloc(MAX_MESSAGE_BYTES + 1));
    expect(await decompress(bomb, 'gzip')).toMatchObject({ status: { code: Code.ResourceExhausted } });
  });
});

describe('encodeMessage', () => {
  it('percent-encodes what an HTTP/2 header cannot carry', () => {
    expect(encodeMessage('bad value: 50% “quoted”\n')).toBe(
      'bad%20value:%2050%25%20%E2%80%9Cquoted%E2%80%9D%0A',
    );
    expect(decodeURIComponent(encodeMessage('a%b ✓'))).toBe('a%b ✓');
  });
});
