import { Command } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { ScriptCommand } from '../../src/store/redis.js';

/** The bytes a command goes out as (ioredis's own encoding for the base class). */
const wire = (c: Command): Buffer => {
  const w = c.toWritable(undefined as unknown as object);
  return typeof w === 'string' ? Buffer.from(w) : w;
};

const numbers = (...xs: number[]): Buffer => {
  const b = Buffer.alloc(8 * xs.length);
  for (let i = 0; i < xs.length; i++) b.writeDoubleLE(xs[i]!, 8 * i);
  return b;
};

describe('ScriptCommand encoding', () => {
  const keys = ['rk:{a:x}:=:req:60000', 'rk:{a:x}:=:conc', 'rk:{a:x}:res:é-ü'];

  it('writes a binary argument and the text around it as ioredis would, byte for byte', () => {
    // NUL, CR/LF and bytes above 0x7f inside the binary argument; a UTF-8 request id beside it.
    const bin = Buffer.concat([numbers(1, 0, 600000, 2, 1, 100, 60000, 1, 0), Buffer.from([0, 13, 10, 255])]);
    const args = [0, 2, bin, 3, 'req-ünïcode-€', 0, ''];
    const ours = wire(new ScriptCommand('evalsha', 'f'.repeat(40), keys, args, true));
    const theirs = wire(new Command('evalsha', ['f'.repeat(40), keys.length, keys, args]));
    expect(ours.equals(theirs)).toBe(true);
    expect(ours.includes(bin)).toBe(true);
  });

  it('leaves a command without binary arguments to ioredis', () => {
    const args = [0, 1, 'x y', 'ünï'];
    const ours = wire(new ScriptCommand('eval', 'return 1', keys, args, false));
    const theirs = wire(new Command('eval', ['return 1', keys.length, keys, args]));
    expect(ours.equals(theirs)).toBe(true);
  });
});
