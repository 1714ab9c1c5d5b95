import { describe, expect, it } from 'vitest';
import { parseH2Log } from '../../bench/h2load.js';

// h2load --log-file lines: start (µs since the epoch), HTTP status, duration (µs).
const T0 = 1_795_633_579_927_829;
const line = (afterMs: number, status: number, durationUs: number) =>
  `${T0 + afterMs * 1000}\t${status}\t${durationUs}`;

describe('parseH2Log', () => {
  const log = [
    line(0, 200, 9000),
    line(999, 200, 8000),
    line(1000, 200, 300),
    line(1500, 503, 400),
    line(2999, 200, 500),
    line(3000, 200, 600),
    '',
  ].join('\n');

  it('reads every request without a window', () => {
    expect(parseH2Log(log).map((r) => r[2])).toEqual([9000, 8000, 300, 400, 500, 600]);
  });

  it('keeps the requests started in the measured window, after the warm-up from the first start', () => {
    const rows = parseH2Log(log, { warmupS: 1, durationS: 2 });
    expect(rows.map((r) => r[2])).toEqual([300, 400, 500]);
    expect(rows.map((r) => r[1])).toEqual([200, 503, 200]);
  });

  it('finds the first start wherever it is in the file (connections log out of order)', () => {
    const shuffled = [line(1000, 200, 300), line(0, 200, 9000), line(2000, 200, 700)].join('\n');
    expect(parseH2Log(shuffled, { warmupS: 1, durationS: 1 }).map((r) => r[2])).toEqual([300]);
  });
});
