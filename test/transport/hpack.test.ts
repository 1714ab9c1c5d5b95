/**
 * HPACK against RFC 7541: the Appendix C examples (literal forms, requests and responses with and
 * without Huffman coding, eviction), malformed blocks, the stateless encoder through the decoder, and
 * Huffman decoding against an independent encoder built from the RFC's code lengths.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeMessage } from '../../src/transport/grpc-wire.js';
import { encodeHeaders, HpackDecoder, HpackError } from '../../src/transport/hpack.js';

type Field = [string, string];

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** An N-bit-prefix integer (RFC 7541 §5.1) with `flags` in the first byte's high bits. */
const int = (prefixBits: number, value: number, flags = 0): Buffer => {
  const max = 2 ** prefixBits - 1;
  if (value < max) return Buffer.of(flags | value);
  const out = [flags | max];
  let rest = value - max;
  for (; rest >= 128; rest = Math.floor(rest / 128)) out.push((rest % 128) | 0x80);
  out.push(rest);
  return Buffer.from(out);
};

const decode = (decoder: HpackDecoder, block: Uint8Array): Field[] => {
  const fields: Field[] = [];
  decoder.decode(block, (name, value) => fields.push([name, value]));
  return fields;
};

/** The dynamic table, newest first: indexes from 62 until one runs past the table (which changes nothing). */
const dynamicTable = (decoder: HpackDecoder): Field[] => {
  const entries: Field[] = [];
  for (let index = 62; ; index++) {
    try {
      entries.push(...decode(decoder, int(7, index, 0x80)));
    } catch (err) {
      if (err instanceof HpackError) return entries;
      throw err;
    }
  }
};

const tableSize = (entries: Field[]): number =>
  entries.reduce((sum, [name, value]) => sum + name.length + value.length + 32, 0);

interface Step {
  block: string;
  fields: Field[];
  /** Newest first. */
  table: Field[];
  size: number;
}

/** Decodes the steps in order on one decoder, checking the fields and the dynamic table after each. */
const series = (maxTableSize: number, steps: Step[]): void => {
  const decoder = new HpackDecoder(maxTableSize);
  for (const step of steps) {
    expect(decode(decoder, hex(step.block))).toEqual(step.fields);
    const table = dynamicTable(decoder);
    expect(table).toEqual(step.table);
    expect(tableSize(table)).toBe(step.size);
  }
};

const expectError = (block: Uint8Array, message: RegExp, decoder = new HpackDecoder()): void => {
  const run = () => decoder.decode(block, () => {});
  expect(run).toThrow(HpackError);
  expect(run).toThrow(message);
};

/** RFC 7541 Appendix B code lengths, then EOS (256); kept apart from the module's copy on purpose. */
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

/** The RFC's code is canonical: codes follow from the lengths, counted up in (length, symbol) order. */
const HUFFMAN_CODES = (() => {
  const codes = new Array<number>(HUFFMAN_LENGTHS.length).fill(0);
  const order = [...HUFFMAN_LENGTHS.keys()].sort(
    (a, b) => HUFFMAN_LENGTHS[a]! - HUFFMAN_LENGTHS[b]! || a - b,
  );
  let code = 0;
  let length = HUFFMAN_LENGTHS[order[0]!]!;
  for (const [i, symbol] of order.entries()) {
    if (i > 0) {
      code = (code + 1) * 2 ** (HUFFMAN_LENGTHS[symbol]! - length);
      length = HUFFMAN_LENGTHS[symbol]!;
    }
    codes[symbol] = code;
  }
  return codes;
})();

/** Huffman-codes latin1 text, padding with the EOS prefix (all ones). */
const huffman = (text: string): Buffer => {
  const bits: number[] = [];
  for (const byte of Buffer.from(text, 'latin1')) {
    for (let bit = HUFFMAN_LENGTHS[byte]! - 1; bit >= 0; bit--) bits.push((HUFFMAN_CODES[byte]! >>> bit) & 1);
  }
  while (bits.length % 8 !== 0) bits.push(1);
  const out = Buffer.alloc(bits.length / 8);
  for (const [i, bit] of bits.entries()) out[i >> 3]! |= bit << (7 - (i & 7));
  return out;
};

/** A ':path' literal (without indexing, static name) whose value is the given Huffman bytes. */
const huffmanPath = (coded: Uint8Array): Buffer =>
  Buffer.concat([Buffer.of(0x04), int(7, coded.length, 0x80), coded]);

const latin1 = fc.string({ unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)) });

describe('HpackDecoder: RFC 7541 C.2 literal forms', () => {
  it('C.2.1 literal with indexing adds to the dynamic table', () => {
    const decoder = new HpackDecoder();
    expect(decode(decoder, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'))).toEqual([
      ['custom-key', 'custom-header'],
    ]);
    expect(dynamicTable(decoder)).toEqual([['custom-key', 'custom-header']]);
    expect(decode(decoder, hex('be'))).toEqual([['custom-key', 'custom-header']]);
  });

  it('C.2.2 literal without indexing leaves the table empty', () => {
    const decoder = new HpackDecoder();
    expect(decode(decoder, hex('040c 2f73 616d 706c 652f 7061 7468'))).toEqual([[':path', '/sample/path']]);
    expect(dynamicTable(decoder)).toEqual([]);
  });

  it('C.2.3 literal never indexed leaves the table empty', () => {
    const decoder = new HpackDecoder();
    expect(decode(decoder, hex('1008 7061 7373 776f 7264 0673 6563 7265 74'))).toEqual([
      ['password', 'secret'],
    ]);
    expect(dynamicTable(decoder)).toEqual([]);
  });

  it('C.2.4 indexed field', () => {
    const decoder = new HpackDecoder();
    expect(decode(decoder, hex('82'))).toEqual([[':method', 'GET']]);
    expect(dynamicTable(decoder)).toEqual([]);
  });
});

const requests: Field[][] = [
  [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', '/'],
    [':authority', 'www.example.com'],
  ],
  [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', '/'],
    [':authority', 'www.example.com'],
    ['cache-control', 'no-cache'],
  ],
  [
    [':method', 'GET'],
    [':scheme', 'https'],
    [':path', '/index.html'],
    [':authority', 'www.example.com'],
    ['custom-key', 'custom-value'],
  ],
];
const requestTables: Field[][] = [
  [[':authority', 'www.example.com']],
  [
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
  [
    ['custom-key', 'custom-value'],
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
];
const requestSizes = [57, 110, 164];

const responses: Field[][] = [
  [
    [':status', '302'],
    ['cache-control', 'private'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['location', 'https://www.example.com'],
  ],
  [
    [':status', '307'],
    ['cache-control', 'private'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['location', 'https://www.example.com'],
  ],
  [
    [':status', '200'],
    ['cache-control', 'private'],
    ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
    ['location', 'https://www.example.com'],
    ['content-encoding', 'gzip'],
    ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
  ],
];
const responseTables: Field[][] = [
  [
    ['location', 'https://www.example.com'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['cache-control', 'private'],
    [':status', '302'],
  ],
  [
    [':status', '307'],
    ['location', 'https://www.example.com'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['cache-control', 'private'],
  ],
  [
    ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
    ['content-encoding', 'gzip'],
    ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
  ],
];
const responseSizes = [222, 222, 215];

const steps = (blocks: string[], fields: Field[][], tables: Field[][], sizes: number[]): Step[] =>
  blocks.map((block, i) => ({ block, fields: fields[i]!, table: tables[i]!, size: sizes[i]! }));

describe('HpackDecoder: RFC 7541 C.3-C.6 header lists on one connection', () => {
  it('C.3 requests without Huffman coding', () =>
    series(
      4096,
      steps(
        [
          '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
          '8286 84be 5808 6e6f 2d63 6163 6865',
          '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
        ],
        requests,
        requestTables,
        requestSizes,
      ),
    ));

  it('C.4 requests with Huffman coding', () =>
    series(
      4096,
      steps(
        [
          '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
          '8286 84be 5886 a8eb 1064 9cbf',
          '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
        ],
        requests,
        requestTables,
        requestSizes,
      ),
    ));

  it('C.5 responses without Huffman coding, evicting in a 256-byte table', () =>
    series(
      256,
      steps(
        [
          `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
           2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
           6c65 2e63 6f6d`,
          '4803 3330 37c1 c0bf',
          `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
           54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
           5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
           3d31`,
        ],
        responses,
        responseTables,
        responseSizes,
      ),
    ));

  it('C.6 responses with Huffman coding, evicting in a 256-byte table', () =>
    series(
      256,
      steps(
        [
          `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
           2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
          '4883 640e ffc1 c0bf',
          `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
           77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
           9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
        ],
        responses,
        responseTables,
        responseSizes,
      ),
    ));
});

describe('HpackDecoder: dynamic table', () => {
  const literal = (name: string, value: string): Buffer =>
    Buffer.concat([
      Buffer.of(0x40),
      int(7, name.length),
      Buffer.from(name),
      int(7, value.length),
      Buffer.from(value),
    ]);

  it('keeps entries in order as the ring grows and wraps', () => {
    const decoder = new HpackDecoder();
    const added: Field[] = [];
    for (let i = 0; i < 300; i++) {
      const field: Field = [`k${i % 7}`, `value-${i}`];
      expect(decode(decoder, literal(...field))).toEqual([field]);
      added.unshift(field);
      const table = dynamicTable(decoder);
      let kept = 0;
      while (kept < added.length && tableSize(added.slice(0, kept + 1)) <= 4096) kept++;
      expect(table).toEqual(added.slice(0, kept));
    }
  });

  it('empties the table for an entry larger than it', () => {
    const decoder = new HpackDecoder(64);
    decode(decoder, literal('a', 'b'));
    expect(dynamicTable(decoder)).toEqual([['a', 'b']]);
    expect(decode(decoder, literal('c', 'x'.repeat(32)))).toEqual([['c', 'x'.repeat(32)]]);
    expect(dynamicTable(decoder)).toEqual([]);
  });

  it('applies size updates at the start of a block, up to the advertised size', () => {
    const decoder = new HpackDecoder();
    decode(decoder, Buffer.concat([literal('a', 'b'), literal('c', 'd')]));
    expect(decode(decoder, hex('3f 03 82'))).toEqual([[':method', 'GET']]);
    expect(dynamicTable(decoder)).toEqual([['c', 'd']]);
    expect(decode(decoder, hex('20 3f e1 1f'))).toEqual([]);
    expect(dynamicTable(decoder)).toEqual([]);
    decode(decoder, literal('e', 'f'));
    expect(dynamicTable(decoder)).toEqual([['e', 'f']]);
  });

  it('reads a name from the dynamic table', () => {
    const decoder = new HpackDecoder();
    decode(decoder, literal('x-request-id', 'a'));
    expect(decode(decoder, hex('0f 2f 01 62'))).toEqual([['x-request-id', 'b']]);
  });

  it('accepts a Uint8Array that is not a Buffer', () => {
    const bytes = hex('040c 2f73 616d 706c 652f 7061 7468');
    const view = new Uint8Array(new ArrayBuffer(bytes.length + 3), 3);
    view.set(bytes);
    expect(decode(new HpackDecoder(), view)).toEqual([[':path', '/sample/path']]);
  });
});

describe('HpackDecoder: malformed blocks throw HpackError', () => {
  it.each<[string, string, RegExp]>([
    ['index 0', '80', /index 0/],
    ['an index past the static table when the dynamic one is empty', 'be', /index 62 past the tables/],
    ['a name index past the tables', '7f 00 01 61', /index 63 past the tables/],
    ['a string past the end', '04 05 6162', /string past the end/],
    ['a missing value', '04', /ends before a string/],
    ['a missing name', '00', /ends before a string/],
    ['a truncated integer', '1f', /ends inside an integer/],
    ['a truncated multi-byte integer', 'ff 80', /ends inside an integer/],
    ['a string length truncated mid-integer', '04 7f 81', /ends inside an integer/],
    ['an integer over 2^31 - 1', 'ff ff ff ff ff 07', /integer overflow/],
    ['an integer with six continuation bytes', 'ff 80 80 80 80 80 00', /integer too long/],
    ['Huffman with EOS', '04 85 ffffffff fc', /contains EOS/],
    ['Huffman padding of 8 bits', '04 81 ff', /padding/],
    ['Huffman padding of a whole byte after a symbol', '04 82 1fff', /padding/],
    ['Huffman padding of 29 bits', '04 85 ff9fffffff', /padding/],
    ['Huffman with EOS after symbols', '04 87 52bc30ffffffff', /contains EOS/],
    ['Huffman padding not all ones', '04 81 00', /padding/],
    ['a size update above the advertised size', '3f e2 1f', /4097 above the advertised 4096/],
    ['a size update after a field', '82 20', /after a header field/],
  ])('%s', (_what, block, message) => expectError(hex(block), message));

  it('accepts the largest integer, 2^31 - 1', () =>
    expectError(int(7, 2 ** 31 - 1, 0x80), /index 2147483647 past the tables/));

  it('rejects 2^31 even in five continuation bytes', () =>
    expectError(int(7, 2 ** 31, 0x80), /integer overflow/));

  it('honours a smaller advertised size', () => {
    expect(decode(new HpackDecoder(256), hex('3f e1 01'))).toEqual([]);
    expectError(hex('3f e2 01'), /257 above the advertised 256/, new HpackDecoder(256));
  });

  it('throws nothing but HpackError on arbitrary bytes', () =>
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          new HpackDecoder().decode(bytes, () => {});
        } catch (err) {
          expect(err).toBeInstanceOf(HpackError);
        }
      }),
    ));
});

describe('Huffman decoding', () => {
  it('the test encoder reproduces the RFC examples', () => {
    expect(huffman('www.example.com').toString('hex')).toBe('f1e3c2e5f23a6ba0ab90f4ff');
    expect(huffman('custom-value').toString('hex')).toBe('25a849e95bb8e8b4bf');
    expect(huffman('302').toString('hex')).toBe('6402');
    expect(HUFFMAN_CODES[256]).toBe(0x3fffffff);
  });

  it('decodes every byte value alone and all together', () => {
    const decoder = new HpackDecoder();
    const all = Array.from({ length: 256 }, (_, c) => String.fromCharCode(c));
    for (const text of [...all, all.join(''), all.reverse().join('')]) {
      expect(decode(decoder, huffmanPath(huffman(text)))).toEqual([[':path', text]]);
    }
  });

  it('decodes an empty string', () => {
    expect(decode(new HpackDecoder(), huffmanPath(Buffer.alloc(0)))).toEqual([[':path', '']]);
  });

  it('decodes a string longer than the scratch buffer', () => {
    const text = 'a'.repeat(5000) + 'zzz';
    expect(decode(new HpackDecoder(), huffmanPath(huffman(text)))).toEqual([[':path', text]]);
  });

  it('decodes random latin1 strings', () => {
    const decoder = new HpackDecoder();
    fc.assert(
      fc.property(latin1, (text) => {
        expect(decode(decoder, huffmanPath(huffman(text)))).toEqual([[':path', text]]);
      }),
      { numRuns: 500 },
    );
  });
});

describe('encodeHeaders', () => {
  const roundTrip = (fields: Field[]): Buffer => {
    const block = encodeHeaders(fields);
    expect(decode(new HpackDecoder(), block)).toEqual(fields);
    return block;
  };

  it("indexes ':status: 200' as the single byte 0x88", () => {
    expect(roundTrip([[':status', '200']]).toString('hex')).toBe('88');
  });

  it('indexes a static entry with an empty value', () => {
    expect(roundTrip([['accept', '']]).toString('hex')).toBe('93');
  });

  it('uses the static name index for content-type', () => {
    const value = 'application/grpc+proto';
    expect(roundTrip([['content-type', value]])).toEqual(
      Buffer.concat([hex('0f 10 16'), Buffer.from(value)]),
    );
  });

  it('writes a literal name for grpc-status', () => {
    expect(roundTrip([['grpc-status', '0']])).toEqual(hex('00 0b 677270632d737461747573 01 30'));
  });

  it('carries a percent-encoded grpc-message and an empty value', () => {
    roundTrip([
      ['grpc-status', '8'],
      ['grpc-message', encodeMessage('quota "chat" exceeded: 100% used ✓')],
      ['x-empty', ''],
    ]);
  });

  it('writes a 300-byte value with a multi-byte length', () => {
    const value = 'v'.repeat(300);
    expect(roundTrip([['x-big', value]])).toEqual(
      Buffer.concat([hex('00 05'), Buffer.from('x-big'), hex('7f ad 01'), Buffer.from(value)]),
    );
  });

  it('writes a 20000-byte value with a four-byte length', () => {
    const block = roundTrip([['x-huge', 'h'.repeat(20_000)]]);
    expect(block.subarray(8, 12)).toEqual(hex('7f a1 9b 01'));
  });

  it('carries latin1 bytes', () => {
    roundTrip([['x-bytes', '\u0000\u007f\u0080\u00ff']]);
  });

  it('writes nothing for no fields', () => {
    expect(encodeHeaders([]).length).toBe(0);
  });

  it('round-trips random header lists', () => {
    const staticNames = [
      ':path',
      ':status',
      'content-type',
      'accept-encoding',
      'user-agent',
      'www-authenticate',
    ];
    const name = fc.oneof(
      fc.string({ unit: fc.constantFrom(...'abcgrp-xyz'), minLength: 1, maxLength: 20 }),
      fc.constantFrom(...staticNames),
    );
    const value = fc.oneof(latin1, fc.constantFrom('', '200', '/', 'gzip, deflate', 'v'.repeat(200)));
    fc.assert(
      fc.property(fc.array(fc.tuple(name, value), { maxLength: 20 }), (fields) => {
        roundTrip(fields);
      }),
    );
  });
});
