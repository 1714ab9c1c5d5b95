/**
 * HPACK (RFC 7541) for the server side of HTTP/2: a decoder for the peer's header blocks, with its
 * dynamic table, and a stateless encoder that never adds to the peer's table. Strings are bytes on the
 * wire, read and written as latin1 (one char per byte), as Node's http2 does.
 */

/** A malformed header block: the connection must end with COMPRESSION_ERROR (RFC 7540 §4.3). */
export class HpackError extends Error {
  override readonly name = 'HpackError';
}

/** RFC 7541 Appendix A; index 0 is unused so the wire index reads the table directly. */
const STATIC_TABLE: ReadonlyArray<readonly [string, string]> = [
  ['', ''],
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];
const STATIC_COUNT = STATIC_TABLE.length - 1;
const STATIC_NAMES = STATIC_TABLE.map(([name]) => name);
const STATIC_VALUES = STATIC_TABLE.map(([, value]) => value);

/** RFC 7541 §4.1: an entry's size counts 32 octets of overhead beyond its name and value. */
const ENTRY_OVERHEAD = 32;

/** A varint may carry at most this many continuation bytes (enough for 2^31 - 1 under any prefix). */
const MAX_CONTINUATIONS = 5;
const MAX_INTEGER = 0x7fffffff;

/** RFC 7541 Appendix B: the code (right-aligned) and bit length of each byte, then EOS (256). */
const HUFFMAN_CODES = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
  0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef,
  0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7,
  0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa,
  0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c,
  0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
  0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
  0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29,
  0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd,
  0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda,
  0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0,
  0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6,
  0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea,
  0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
  0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5,
  0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
  0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3,
  0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9,
  0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7,
  0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
  0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
  0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
];
const HUFFMAN_LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28,
  28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7,
  8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19,
  13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13,
  28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21,
  22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23,
  22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25,
  25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];
const EOS = 256;

/*
 * Huffman decoding walks the code tree a nibble at a time. A state is an inner node of the tree (256 of
 * them for 257 leaves; the root is 0); TRANSITIONS[state << 4 | nibble] packs the next state (shifted
 * left by 4, so it indexes the table directly), the symbol completed on the way if any (no code is
 * shorter than 5 bits, so at most one per nibble), and whether EOS was met.
 */
const NEXT_MASK = 0xff0;
const SYMBOL_SHIFT = 12;
const EMIT = 1 << 20;
const FAIL = 1 << 21;
const TRANSITIONS = new Uint32Array(256 * 16);
/** States where the string may end: at most 7 bits into the all-ones path (the EOS prefix, §5.2). */
const ACCEPTING = new Uint8Array(256);

{
  // children[2n + bit]: > 0 an inner node, < 0 a leaf holding ~symbol.
  const children = new Int16Array(2 * 256);
  let nodes = 1;
  for (let symbol = 0; symbol <= EOS; symbol++) {
    const code = HUFFMAN_CODES[symbol]!;
    let node = 0;
    for (let bit = HUFFMAN_LENGTHS[symbol]! - 1; bit > 0; bit--) {
      const slot = 2 * node + ((code >>> bit) & 1);
      if (children[slot] === 0) children[slot] = nodes++;
      node = children[slot]!;
    }
    children[2 * node + (code & 1)] = ~symbol;
  }
  for (let state = 0; state < 256; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let node = state;
      let entry = 0;
      for (let bit = 3; bit >= 0; bit--) {
        const child = children[2 * node + ((nibble >> bit) & 1)]!;
        if (child > 0) {
          node = child;
        } else if (~child === EOS) {
          entry = FAIL;
          break;
        } else {
          entry = EMIT | (~child << SYMBOL_SHIFT);
          node = 0;
        }
      }
      TRANSITIONS[(state << 4) | nibble] = entry | (node << 4);
    }
  }
  for (let node = 0, depth = 0; depth <= 7; depth++, node = children[2 * node + 1]!) ACCEPTING[node] = 1;
}

/** Huffman output lands here before becoming a string; longer strings get their own buffer. */
const scratch = Buffer.allocUnsafeSlow(4096);

/** The Huffman-coded string in src[start, end). */
const huffmanDecode = (src: Buffer, start: number, end: number): string => {
  // Each output byte takes at least 5 input bits.
  const bound = Math.floor(((end - start) * 8) / 5);
  const out = bound <= scratch.length ? scratch : Buffer.allocUnsafe(bound);
  let length = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const byte = src[i]!;
    let entry = TRANSITIONS[state | (byte >> 4)]!;
    if (entry >= EMIT) {
      if (entry & FAIL) throw new HpackError('Huffman string contains EOS');
      out[length++] = (entry >> SYMBOL_SHIFT) & 0xff;
    }
    entry = TRANSITIONS[(entry & NEXT_MASK) | (byte & 0xf)]!;
    if (entry >= EMIT) {
      if (entry & FAIL) throw new HpackError('Huffman string contains EOS');
      out[length++] = (entry >> SYMBOL_SHIFT) & 0xff;
    }
    state = entry & NEXT_MASK;
  }
  if (ACCEPTING[state >> 4] === 0) throw new HpackError('invalid Huffman padding');
  return out.toString('latin1', 0, length);
};

const EMPTY = Buffer.alloc(0);

export class HpackDecoder {
  private readonly maxTableSize: number;
  /** The table's current limit, as the peer last set it by a size update. */
  private limit: number;
  private size = 0;
  private count = 0;
  /** The dynamic table is a ring: the newest entry at slot `head`, older ones at lower slots (mod capacity). */
  private head = 0;
  private mask = 15;
  private names: string[] = new Array<string>(16).fill('');
  private values: string[] = new Array<string>(16).fill('');
  /** The block being decoded and the read position in it. */
  private src: Buffer = EMPTY;
  private pos = 0;

  /** maxTableSize: the SETTINGS_HEADER_TABLE_SIZE this side advertised (default 4096). */
  constructor(maxTableSize = 4096) {
    this.maxTableSize = maxTableSize;
    this.limit = maxTableSize;
  }

  /**
   * Decodes one complete header block (HEADERS + CONTINUATION payloads already joined), updating the
   * dynamic table. Calls onHeader(name, value) for each field in order. Throws HpackError on any
   * malformed input, after which the decoder is unusable (the connection ends). onHeader must not throw:
   * the whole block must be decoded to keep the dynamic table in step with the peer's (RFC 7540 §4.3),
   * so a stream-level refusal belongs after decode returns.
   */
  decode(block: Uint8Array, onHeader: (name: string, value: string) => void): void {
    const src = Buffer.isBuffer(block)
      ? block
      : Buffer.from(block.buffer, block.byteOffset, block.byteLength);
    this.src = src;
    this.pos = 0;
    let fieldSeen = false;
    while (this.pos < src.length) {
      const first = src[this.pos]!;
      if (first >= 0x80) {
        // Indexed header field (§6.1).
        const index = this.integer(7);
        if (index <= STATIC_COUNT) {
          if (index === 0) throw new HpackError('header field index 0');
          onHeader(STATIC_NAMES[index]!, STATIC_VALUES[index]!);
        } else {
          const slot = this.slot(index);
          onHeader(this.names[slot]!, this.values[slot]!);
        }
        fieldSeen = true;
      } else if (first >= 0x40) {
        // Literal with incremental indexing (§6.2.1).
        const name = this.name(6);
        const value = this.string();
        this.insert(name, value);
        onHeader(name, value);
        fieldSeen = true;
      } else if (first >= 0x20) {
        // Dynamic table size update (§6.3), only before the first field (§4.2).
        if (fieldSeen) throw new HpackError('dynamic table size update after a header field');
        const limit = this.integer(5);
        if (limit > this.maxTableSize) {
          throw new HpackError(`dynamic table size ${limit} above the advertised ${this.maxTableSize}`);
        }
        this.limit = limit;
        this.evict(limit);
      } else {
        // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
        const name = this.name(4);
        onHeader(name, this.string());
        fieldSeen = true;
      }
    }
    this.src = EMPTY;
  }

  /** An N-bit-prefix integer (§5.1) at the read position; callers have checked its first byte is there. */
  private integer(prefixBits: number): number {
    const src = this.src;
    let pos = this.pos;
    const prefixMax = (1 << prefixBits) - 1;
    let value = src[pos++]! & prefixMax;
    if (value === prefixMax) {
      // Multiplying rather than shifting keeps the sum exact past 32 bits, so overflow shows.
      for (let scale = 1, n = 0; ; scale *= 128, n++) {
        if (n === MAX_CONTINUATIONS) throw new HpackError('integer too long');
        if (pos >= src.length) throw new HpackError('header block ends inside an integer');
        const byte = src[pos++]!;
        value += (byte & 0x7f) * scale;
        if (byte < 0x80) break;
      }
      if (value > MAX_INTEGER) throw new HpackError('integer overflow');
    }
    this.pos = pos;
    return value;
  }

  /** A string literal (§5.2) at the read position. */
  private string(): string {
    const src = this.src;
    if (this.pos >= src.length) throw new HpackError('header block ends before a string');
    const huffman = src[this.pos]! >= 0x80;
    const length = this.integer(7);
    const start = this.pos;
    const end = start + length;
    if (end > src.length) throw new HpackError('string past the end of the header block');
    this.pos = end;
    return huffman ? huffmanDecode(src, start, end) : src.toString('latin1', start, end);
  }

  /** A literal field's name: an index into the tables, or a string literal when the index is 0. */
  private name(prefixBits: number): string {
    const index = this.integer(prefixBits);
    if (index === 0) return this.string();
    return index <= STATIC_COUNT ? STATIC_NAMES[index]! : this.names[this.slot(index)]!;
  }

  /** The ring slot of dynamic table index `index` (62 is the newest entry). */
  private slot(index: number): number {
    const age = index - STATIC_COUNT - 1;
    if (age >= this.count) throw new HpackError(`header field index ${index} past the tables`);
    return (this.head - age) & this.mask;
  }

  /** Adds an entry, evicting the oldest to make room; one larger than the limit empties the table (§4.4). */
  private insert(name: string, value: string): void {
    const entrySize = name.length + value.length + ENTRY_OVERHEAD;
    if (entrySize > this.limit) {
      this.evict(0);
      return;
    }
    this.evict(this.limit - entrySize);
    if (this.count > this.mask) this.grow();
    this.head = (this.head + 1) & this.mask;
    this.names[this.head] = name;
    this.values[this.head] = value;
    this.count++;
    this.size += entrySize;
  }

  /** Evicts the oldest entries until the table's size is at most `target`. */
  private evict(target: number): void {
    while (this.size > target) {
      const slot = (this.head - this.count + 1) & this.mask;
      this.size -= this.names[slot]!.length + this.values[slot]!.length + ENTRY_OVERHEAD;
      // Drop the strings so an evicted entry does not keep them alive.
      this.names[slot] = '';
      this.values[slot] = '';
      this.count--;
    }
  }

  /** Doubles the ring, laying entries out oldest first so the newest sits at count - 1. */
  private grow(): void {
    const capacity = 2 * (this.mask + 1);
    const names = new Array<string>(capacity).fill('');
    const values = new Array<string>(capacity).fill('');
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head - this.count + 1 + i) & this.mask;
      names[i] = this.names[slot]!;
      values[i] = this.values[slot]!;
    }
    this.names = names;
    this.values = values;
    this.head = this.count - 1;
    this.mask = capacity - 1;
  }
}

/** Per static name: its first index, and the index of each value the table pairs with it. */
const STATIC_LOOKUP = new Map<string, { index: number; values: Map<string, number> }>();
for (let index = 1; index <= STATIC_COUNT; index++) {
  const [name, value] = STATIC_TABLE[index]!;
  let entry = STATIC_LOOKUP.get(name);
  if (!entry) {
    entry = { index, values: new Map() };
    STATIC_LOOKUP.set(name, entry);
  }
  entry.values.set(value, index);
}

/** The bytes an N-bit-prefix integer (§5.1) takes. */
const integerSize = (prefixBits: number, value: number): number => {
  const prefixMax = (1 << prefixBits) - 1;
  if (value < prefixMax) return 1;
  let size = 2;
  for (let rest = value - prefixMax; rest >= 0x80; rest >>>= 7) size++;
  return size;
};

/** Writes an N-bit-prefix integer (§5.1) with `flags` in the first byte's high bits; returns the new offset. */
const writeInteger = (out: Buffer, pos: number, flags: number, prefixBits: number, value: number): number => {
  const prefixMax = (1 << prefixBits) - 1;
  if (value < prefixMax) {
    out[pos++] = flags | value;
    return pos;
  }
  out[pos++] = flags | prefixMax;
  let rest = value - prefixMax;
  while (rest >= 0x80) {
    out[pos++] = (rest & 0x7f) | 0x80;
    rest >>>= 7;
  }
  out[pos++] = rest;
  return pos;
};

/** Below this length a JS copy beats Buffer#write's native call (most names and gRPC values). */
const SHORT_STRING = 24;

/** Writes a string literal without Huffman coding (§5.2). */
const writeString = (out: Buffer, pos: number, value: string): number => {
  const length = value.length;
  pos = writeInteger(out, pos, 0, 7, length);
  if (length >= SHORT_STRING) return pos + out.write(value, pos, 'latin1');
  for (let i = 0; i < length; i++) out[pos++] = value.charCodeAt(i);
  return pos;
};

/**
 * Encodes header fields without touching the peer's dynamic table (so the encoder keeps no state and
 * ignores the peer's SETTINGS_HEADER_TABLE_SIZE): a field whose name AND value are in the static table
 * is an indexed field (e.g. ':status: 200' -> 0x88); otherwise "literal header field without indexing"
 * with the static table's name index when the name is there, else a literal name; strings are not
 * Huffman-coded (H bit 0). Names must already be lowercase (caller's duty).
 */
export function encodeHeaders(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  // Sizing exactly first costs a second lookup per field but spares a slice of an oversized buffer.
  let size = 0;
  for (const [name, value] of fields) {
    const known = STATIC_LOOKUP.get(name);
    const valueSize = integerSize(7, value.length) + value.length;
    if (known === undefined) size += 1 + integerSize(7, name.length) + name.length + valueSize;
    else if (known.values.has(value))
      size += 1; // static indices fit a 7-bit prefix
    else size += integerSize(4, known.index) + valueSize;
  }
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  for (const [name, value] of fields) {
    const known = STATIC_LOOKUP.get(name);
    if (known === undefined) {
      out[pos++] = 0;
      pos = writeString(out, pos, name);
      pos = writeString(out, pos, value);
      continue;
    }
    const index = known.values.get(value);
    if (index !== undefined) {
      pos = writeInteger(out, pos, 0x80, 7, index);
    } else {
      pos = writeInteger(out, pos, 0, 4, known.index);
      pos = writeString(out, pos, value);
    }
  }
  return out;
}
