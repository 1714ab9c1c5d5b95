/** HTTP/2 wire facts (RFC 9113): frame types, flags, settings, error codes, and frame writing. */

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
export const FRAME_HEADER = 9;

export const DATA = 0x0;
export const HEADERS = 0x1;
export const PRIORITY = 0x2;
export const RST_STREAM = 0x3;
export const SETTINGS = 0x4;
export const PUSH_PROMISE = 0x5;
export const PING = 0x6;
export const GOAWAY = 0x7;
export const WINDOW_UPDATE = 0x8;
export const CONTINUATION = 0x9;

export const END_STREAM = 0x1;
export const ACK = 0x1;
export const END_HEADERS = 0x4;
export const PADDED = 0x8;
export const PRIORITY_FLAG = 0x20;

export const SETTINGS_HEADER_TABLE_SIZE = 0x1;
export const SETTINGS_ENABLE_PUSH = 0x2;
export const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
export const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
export const SETTINGS_MAX_FRAME_SIZE = 0x5;
export const SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

export const NO_ERROR = 0x0;
export const PROTOCOL_ERROR = 0x1;
export const FLOW_CONTROL_ERROR = 0x3;
export const STREAM_CLOSED = 0x5;
export const FRAME_SIZE_ERROR = 0x6;
export const REFUSED_STREAM = 0x7;
export const CANCEL = 0x8;
export const COMPRESSION_ERROR = 0x9;
export const ENHANCE_YOUR_CALM = 0xb;

export const DEFAULT_WINDOW = 65_535;
export const MAX_WINDOW = 0x7fff_ffff;
export const DEFAULT_MAX_FRAME = 16_384;
export const MAX_FRAME_LIMIT = 16_777_215;

/** A connection-level failure: GOAWAY with this code, then the socket closes. */
export class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Writes a frame header at `at`; returns where the payload goes. */
export const writeFrameHeader = (
  b: Buffer,
  at: number,
  length: number,
  type: number,
  flags: number,
  streamId: number,
): number => {
  b.writeUIntBE(length, at, 3);
  b[at + 3] = type;
  b[at + 4] = flags;
  b.writeUInt32BE(streamId, at + 5);
  return at + FRAME_HEADER;
};

export const frameHeader = (length: number, type: number, flags: number, streamId: number): Buffer => {
  const b = Buffer.allocUnsafe(FRAME_HEADER);
  writeFrameHeader(b, 0, length, type, flags, streamId);
  return b;
};

/** A whole frame's buffer, its header written and `length` bytes of payload left to fill from FRAME_HEADER. */
const newFrame = (length: number, type: number, flags: number, streamId: number): Buffer => {
  const b = Buffer.allocUnsafe(FRAME_HEADER + length);
  writeFrameHeader(b, 0, length, type, flags, streamId);
  return b;
};

/** A frame whose payload is a 32-bit number: RST_STREAM (an error code) or WINDOW_UPDATE (an increment). */
export const u32Frame = (type: number, streamId: number, value: number): Buffer => {
  const b = newFrame(4, type, 0, streamId);
  b.writeUInt32BE(value, FRAME_HEADER);
  return b;
};

export const settingsFrame = (settings: ReadonlyArray<readonly [number, number]>): Buffer => {
  const b = newFrame(settings.length * 6, SETTINGS, 0, 0);
  settings.forEach(([id, value], i) => {
    b.writeUInt16BE(id, FRAME_HEADER + i * 6);
    b.writeUInt32BE(value, FRAME_HEADER + i * 6 + 2);
  });
  return b;
};

export const SETTINGS_ACK = frameHeader(0, SETTINGS, ACK, 0);

export const goawayFrame = (lastStreamId: number, code: number): Buffer => {
  const b = newFrame(8, GOAWAY, 0, 0);
  b.writeUInt32BE(lastStreamId, FRAME_HEADER);
  b.writeUInt32BE(code, FRAME_HEADER + 4);
  return b;
};

export const pingFrame = (flags: number, payload: Uint8Array): Buffer => {
  const b = newFrame(8, PING, flags, 0);
  b.set(payload.subarray(0, 8), FRAME_HEADER);
  return b;
};

/**
 * A header block as HEADERS plus CONTINUATION frames no longer than the peer's max frame size, one
 * Buffer. endStream: the block ends the stream (trailers, or a trailers-only answer).
 */
export const headerFrames = (
  streamId: number,
  block: Buffer,
  endStream: boolean,
  maxFrame: number,
): Buffer => {
  const end = endStream ? END_STREAM : 0;
  if (block.length <= maxFrame) {
    const b = newFrame(block.length, HEADERS, END_HEADERS | end, streamId);
    block.copy(b, FRAME_HEADER);
    return b;
  }
  const parts: Buffer[] = [];
  for (let at = 0; at < block.length; at += maxFrame) {
    const piece = block.subarray(at, at + maxFrame);
    const last = at + maxFrame >= block.length;
    parts.push(
      frameHeader(
        piece.length,
        at === 0 ? HEADERS : CONTINUATION,
        (at === 0 ? end : 0) | (last ? END_HEADERS : 0),
        streamId,
      ),
      piece,
    );
  }
  return Buffer.concat(parts);
};
