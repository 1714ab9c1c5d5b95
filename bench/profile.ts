import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

interface Cost {
  name: string;
  where: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  file: string;
  /** Busy time sampled (idle excluded); shares are of this. */
  totalMs: number;
  /** Self time by function, busiest first. */
  functions: Cost[];
  /** Time with the function on the stack, for the project's own code (src/, gen/). */
  inclusive: Cost[];
  /** Self time by package (node_modules), source file (src/, gen/) or runtime. */
  areas: { area: string; ms: number; share: number }[];
}

const areaOf = (url: string, fn: string): string => {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  if (url.startsWith('node:')) return 'node:internals';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1] as string;
  const src = /\/((?:src|gen|bench)\/.*)$/.exec(url);
  return src ? (src[1] as string) : url;
};

const shortUrl = (url: string): string => {
  const nm = url.indexOf('/node_modules/');
  if (nm >= 0) return url.slice(nm + 1);
  return url.replace(/^.*\/((?:src|gen|bench)\/)/, '$1');
};

const ownCode = (url: string): boolean => !url.includes('/node_modules/') && /\/(src|gen)\//.test(url);

/** Self and inclusive time of a V8 .cpuprofile written by `node --cpu-prof`. */
export const summarizeProfile = (file: string, top = 20): ProfileSummary => {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n: CpuProfileNode): { key: string; name: string; where: string } => {
    const { functionName, url, lineNumber } = n.callFrame;
    const name = functionName || '(anonymous)';
    const where = url ? `${shortUrl(url)}:${lineNumber + 1}` : '';
    return { key: `${name} ${where}`, name, where };
  };

  const self = new Map<string, { name: string; where: string; us: number }>();
  const incl = new Map<string, { name: string; where: string; us: number }>();
  const areas = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i] as number);
    const us = p.timeDeltas[i] ?? 0;
    if (!n || n.callFrame.functionName === '(idle)') continue;
    total += us;
    const k = keyOf(n);
    const s = self.get(k.key) ?? { name: k.name, where: k.where, us: 0 };
    s.us += us;
    self.set(k.key, s);
    const area = areaOf(n.callFrame.url, k.name);
    areas.set(area, (areas.get(area) ?? 0) + us);
    // Each function on this sample's stack once (recursion counted once).
    const seen = new Set<string>();
    for (let id: number | undefined = n.id; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id);
      if (!f || !ownCode(f.callFrame.url)) continue;
      const fk = keyOf(f);
      if (seen.has(fk.key)) continue;
      seen.add(fk.key);
      const e = incl.get(fk.key) ?? { name: fk.name, where: fk.where, us: 0 };
      e.us += us;
      incl.set(fk.key, e);
    }
  }
  const share = (us: number) => (total > 0 ? us / total : 0);
  const costs = (m: Map<string, { name: string; where: string; us: number }>): Cost[] =>
    [...m.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, ms: f.us / 1000, share: share(f.us) }));
  return {
    file,
    totalMs: total / 1000,
    functions: costs(self),
    inclusive: costs(incl),
    areas: [...areas.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([area, us]) => ({ area, ms: us / 1000, share: share(us) })),
  };
};

export const profilesIn = (dir: string): string[] => {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith('.cpuprofile'))
      .map((f) => join(dir, f));
  } catch {
    return [];
  }
};

export const formatProfile = (title: string, s: ProfileSummary): string => {
  const pct = (x: number) => `${(x * 100).toFixed(1).padStart(5)}%`;
  return [
    `Profile ${title}: ${s.totalMs.toFixed(0)} ms busy (${s.file})`,
    '  self time by area:',
    ...s.areas.slice(0, 12).map((a) => `    ${pct(a.share)}  ${a.area}`),
    '  self time by function:',
    ...s.functions.map((f) => `    ${pct(f.share)}  ${f.name}  ${f.where}`),
    '  own code, time on the stack (inclusive):',
    ...s.inclusive.slice(0, 15).map((f) => `    ${pct(f.share)}  ${f.name}  ${f.where}`),
  ].join('\n');
};

// `node dist/bench/profile.js FILE...`: summarize profiles taken elsewhere.
if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of process.argv.slice(2))
    process.stdout.write(`${formatProfile(f, summarizeProfile(f, 25))}\n\n`);
}
