import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  /** Self time by function, busiest first (idle excluded from shares). */
  functions: { name: string; where: string; ms: number; share: number }[];
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

/** Self-time summary of a V8 .cpuprofile written by `node --cpu-prof`. */
export const summarizeProfile = (file: string, top = 20): ProfileSummary => {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] as number;
    self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const fns = new Map<string, { name: string; where: string; us: number }>();
  const areas = new Map<string, number>();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') continue;
    total += us;
    const name = functionName || '(anonymous)';
    const where = url ? `${shortUrl(url)}:${lineNumber + 1}` : '';
    const key = `${name} ${where}`;
    const f = fns.get(key) ?? { name, where, us: 0 };
    f.us += us;
    fns.set(key, f);
    const area = areaOf(url, name);
    areas.set(area, (areas.get(area) ?? 0) + us);
  }
  const share = (us: number) => (total > 0 ? us / total : 0);
  return {
    file,
    totalMs: total / 1000,
    functions: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, ms: f.us / 1000, share: share(f.us) })),
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
    '  by area:',
    ...s.areas.slice(0, 12).map((a) => `    ${pct(a.share)}  ${a.area}`),
    '  by function (self time):',
    ...s.functions.map((f) => `    ${pct(f.share)}  ${f.name}  ${f.where}`),
  ].join('\n');
};
