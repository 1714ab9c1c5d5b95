import type { Pass } from './run.js';

interface Report {
  startedAt: string;
  options: { durationS: number; warmupS: number; concurrency: number; connections: number };
  machine: { cpus: number; loadavgBefore: number[]; loadavgAfter: number[]; node: string };
  notes: string[];
  passes: Pass[];
}

const f = (x: number | undefined, digits = 0): string =>
  x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits);
const pct = (x: number | undefined): string =>
  x === undefined || Number.isNaN(x) ? '-' : `${Math.round(x * 100)}%`;

const COLUMNS: [string, (p: Pass) => string][] = [
  ['scenario', (p) => p.scenario],
  ['driver', (p) => p.driver],
  ['mode', (p) => (p.mode === 'paced' ? `paced ${f(p.targetRate)}/s` : 'peak')],
  ['decisions/s', (p) => f(p.rate)],
  ['p50 ms', (p) => f(p.latency.p50, 2)],
  ['p99 ms', (p) => f(p.latency.p99, 2)],
  ['p99.9 ms', (p) => f(p.latency.p999, 2)],
  ['srv CPU ms/1k', (p) => f(p.serverCpuMsPer1k, 1)],
  ['srv CPU', (p) => pct(p.serverCpuShare)],
  ['client CPU', (p) => pct(p.clientCpuShare)],
  ['redis CPU', (p) => pct(p.redisCpuShare)],
  ['others', (p) => (p.othersCores === undefined ? '-' : `${p.othersCores.toFixed(2)}c`)],
  ['peak RSS MB', (p) => f(p.peakRssMb)],
  ['redis calls/dec', (p) => f(p.redisCallsPerDecision, 2)],
  ['redis cmds/dec', (p) => f(p.redisCommandsPerDecision, 2)],
  ['vs empty', (p) => pct(p.vsEmpty)],
  ['vs script', (p) => pct(p.vsScript)],
  ['errors', (p) => (Object.keys(p.errors).length ? JSON.stringify(p.errors) : '')],
  ['limited by', (p) => p.limitedBy],
];

/** The figures as an aligned text table, with the run's conditions and notes. */
export const formatTable = (r: Report): string => {
  const rows = [COLUMNS.map(([h]) => h), ...r.passes.map((p) => COLUMNS.map(([, get]) => get(p)))];
  const widths = COLUMNS.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  const line = (row: string[]) =>
    row
      .map((c, i) =>
        i < 3 || i >= COLUMNS.length - 2 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0),
      )
      .join('  ')
      .trimEnd();
  const titles = [...new Map(r.passes.map((p) => [p.scenario, p.title])).entries()].map(
    ([id, t]) => `  ${id}: ${t}`,
  );
  return [
    `Ratekeeper bench ${r.startedAt}: ${r.options.durationS}s measured after ${r.options.warmupS}s warm-up, concurrency ${r.options.concurrency} over ${r.options.connections} connection(s); ${r.machine.cpus} CPUs, node ${r.machine.node}, load average before ${r.machine.loadavgBefore.map((x) => x.toFixed(2)).join(' ')}, after ${r.machine.loadavgAfter.map((x) => x.toFixed(2)).join(' ')}`,
    ...titles,
    '',
    line(rows[0] ?? []),
    ...rows.slice(1).map(line),
    '',
    'CPU shares are of one core over the measured window; "others" is CPU used by processes outside the bench.',
    'vs empty: against the empty grpc-js server driven by the same client; vs script: against the best replay of the same Redis script.',
    ...r.notes.map((n) => `note: ${n}`),
  ].join('\n');
};
