import { readFileSync } from 'node:fs';
import type { Pass } from './run.js';

interface Report {
  startedAt: string;
  options: { durationS: number; warmupS: number; concurrency: number; connections: number };
  machine: { cpus: number; loadavgBefore: number[]; loadavgAfter: number[]; node: string };
  notes: string[];
  passes: Pass[];
}

/** NaN is written to JSON as null: both print as "-". */
const f = (x: number | null | undefined, digits = 0): string =>
  x === undefined || x === null || Number.isNaN(x) ? '-' : x.toFixed(digits);
const pct = (x: number | null | undefined): string =>
  x === undefined || x === null || Number.isNaN(x) ? '-' : `${Math.round(x * 100)}%`;

const COLUMNS: [string, (p: Pass) => string][] = [
  ['scenario', (p) => p.scenario],
  ['driver', (p) => p.driver],
  [
    'mode',
    (p) =>
      p.mode === 'paced'
        ? `paced ${f(p.targetRate)}/s`
        : p.mode === 'half'
          ? `half, ${p.inFlight} in flight (${p.connections ?? 1} conn)`
          : 'peak',
  ],
  ['decisions/s', (p) => f(p.rate)],
  ['p50 ms', (p) => f(p.latency.p50, 2)],
  ['p99 ms', (p) => f(p.latency.p99, 2)],
  ['p99.9 ms', (p) => f(p.latency.p999, 2)],
  ['srv CPU ms/1k', (p) => f(p.serverCpuMsPer1k, 1)],
  ['srv CPU', (p) => pct(p.serverCpuShare)],
  ['srv GC ms/1k', (p) => f(p.gcMsPer1k, 1)],
  ['client CPU', (p) => pct(p.clientCpuShare)],
  ['redis CPU', (p) => pct(p.redisCpuShare)],
  ['others', (p) => (p.othersCores === undefined ? '-' : `${p.othersCores.toFixed(2)}c`)],
  ['peak RSS MB', (p) => f(p.peakRssMb)],
  ['redis scripts/dec', (p) => f(p.redisScriptsPerDecision, 2)],
  ['redis calls/dec', (p) => f(p.redisCallsPerDecision, 2)],
  ['redis cmds/dec', (p) => f(p.redisCommandsPerDecision, 2)],
  ['redis µs/dec', (p) => f(p.redisUsPerDecision, 1)],
  ['vs empty', (p) => pct(p.vsEmpty)],
  ['vs h2', (p) => pct(p.vsH2)],
  ['vs script', (p) => pct(p.vsScript)],
  ['errors', (p) => (Object.keys(p.errors).length ? JSON.stringify(p.errors) : '')],
  ['limited by', (p) => p.limitedBy],
];

/**
 * The issue's targets, judged on the server-bound figure (h2load when it ran, else the Node
 * generator's pre-encoded frames: grpc-js saturates first on this machine): (a) >= 70% of the empty
 * server; (b), (c) at most one Redis call per decision (decisions issued in one event-loop turn share
 * it) and >= 50%; p99 < 2 ms at half of peak (the closed-loop half-load pass; the open-loop paced pass
 * is shown beside it).
 */
export const targets = (passes: Pass[]): string[] => {
  const lines: string[] = [];
  const want: Record<string, number> = { a: 0.7, b: 0.5, c: 0.5 };
  const at = (id: string, mode: Pass['mode']) => passes.find((p) => p.scenario === id && p.mode === mode);
  const latency = (p: Pass) => `p99 ${f(p.latency.p99, 2)} ms at ${f(p.rate)}/s`;
  for (const id of [...new Set(passes.map((p) => p.scenario))]) {
    if (id.startsWith('script:') || id === 'empty:h2') continue;
    const peaks = passes.filter((p) => p.scenario === id && p.mode === 'peak');
    const best =
      peaks.find((p) => p.driver === 'h2load') ?? peaks.find((p) => p.driver === 'h2frames') ?? peaks[0];
    const parts: string[] = [];
    const min = want[id];
    if (best?.vsEmpty !== undefined) {
      const ok = min === undefined ? '' : best.vsEmpty >= min ? ' ok' : ` MISS (target ${pct(min)})`;
      parts.push(`${pct(best.vsEmpty)} of the empty server (${best.driver})${ok}`);
    }
    if (best?.redisScriptsPerDecision !== undefined) {
      const ok = best.redisScriptsPerDecision <= 1.05 ? ' ok' : ' MISS (target <= 1)';
      const other = (best.redisCallsPerDecision ?? 0) - best.redisScriptsPerDecision;
      parts.push(
        `${f(best.redisScriptsPerDecision, 2)} script calls/decision${ok}${other >= 0.01 ? ` (+${f(other, 2)} other commands/decision outside the decision path)` : ''}`,
      );
    }
    const half = at(id, 'half');
    if (half) {
      const ok = half.latency.p99 < 2 ? ' ok' : ' MISS (target < 2 ms)';
      parts.push(
        `${latency(half)} at half of peak (closed loop, ${half.inFlight} in flight over ${half.connections ?? 1} connection(s))${ok}`,
      );
    }
    const paced = at(id, 'paced');
    if (paced) parts.push(`open loop (${paced.driver} paced): ${latency(paced)}`);
    lines.push(`  ${id}: ${parts.join('; ')}`);
  }
  return lines;
};

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
    'Targets:',
    ...targets(r.passes),
    '',
    'CPU shares are of one core over the measured window; "others" is CPU used by processes outside the bench.',
    'vs empty: against the empty grpc-js server driven by the same client (the targets); vs h2: against an empty server on the gRPC port’s own HTTP/2 layer (h2load), the framework the port runs on; vs script: against the best replay of the same Redis script.',
    ...r.notes.map((n) => `note: ${n}`),
  ].join('\n');
};

// `node dist/bench/report.js FILE.json`: print a saved run again.
if (import.meta.url === `file://${process.argv[1]}`) {
  for (const file of process.argv.slice(2))
    process.stdout.write(`${formatTable(JSON.parse(readFileSync(file, 'utf8')))}\n`);
}
