import { create, type DescMethod, fromBinary, isMessage, type Message, toBinary } from '@bufbuild/protobuf';
import { fastDecoderFor } from './fast-decode.js';
import { asBuffer, fastEncoderFor } from './fast-encode.js';

/** A method's request and response in the protobuf binary format, as every binary transport sends them. */
export interface MethodCodec {
  decode: (bytes: Buffer) => Message;
  /** Completes an init shape into a message first: handlers may answer with one, as Connect allows. */
  encode: (msg: unknown) => Buffer;
}

/** The hot path's messages (RateLimitRequest, RateLimitResponse) are read and written by hand; the rest by protobuf-es. */
export const methodCodec = (m: DescMethod): MethodCodec => {
  const decode = fastDecoderFor(m.input) ?? ((bytes: Buffer) => fromBinary(m.input, bytes));
  const encode = fastEncoderFor(m.output) ?? ((msg: Message) => asBuffer(toBinary(m.output, msg)));
  return {
    decode,
    encode: (msg) =>
      encode(isMessage(msg, m.output) ? msg : create(m.output, msg as Record<string, unknown>)),
  };
};
