/**
 * A Dockerfile parser for the tests: instructions with their arguments, line continuations joined,
 * comments and parser directives dropped, exec-form (JSON array) arguments decoded.
 */
export interface Instruction {
  /** Upper-case instruction, e.g. FROM, RUN, CMD. */
  op: string;
  /** The raw argument text. */
  text: string;
  /** Exec form (`["a", "b"]`) decoded; undefined in shell form. */
  exec?: string[];
  line: number;
}

export interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

export const parseDockerfile = (source: string): Instruction[] => {
  const out: Instruction[] = [];
  const lines = source.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let text = lines[i]!;
    if (/^\s*(#|$)/.test(text)) continue;
    while (text.endsWith('\\') && i + 1 < lines.length) {
      i++;
      const next = lines[i]!;
      // Comment lines inside a continuation are dropped, as Docker does.
      if (/^\s*#/.test(next)) continue;
      text = `${text.slice(0, -1)} ${next.trim()}`;
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(text);
    if (!m) throw new Error(`Dockerfile line ${start + 1}: cannot parse "${text}"`);
    const args = m[2]!.trim();
    const ins: Instruction = { op: m[1]!.toUpperCase(), text: args, line: start + 1 };
    if (args.startsWith('[')) {
      const parsed: unknown = JSON.parse(args);
      if (!Array.isArray(parsed) || !parsed.every((s) => typeof s === 'string')) {
        throw new Error(`Dockerfile line ${start + 1}: exec form must be a JSON array of strings`);
      }
      ins.exec = parsed;
    }
    out.push(ins);
  }
  return out;
};

/** Instructions grouped by stage; ARGs before the first FROM are returned apart. */
export const stagesOf = (
  instructions: readonly Instruction[],
): { globalArgs: Instruction[]; stages: Stage[] } => {
  const globalArgs: Instruction[] = [];
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.text);
      if (!m) throw new Error(`Dockerfile line ${ins.line}: cannot parse FROM`);
      stages.push({ from: m[1]!, ...(m[2] ? { name: m[2] } : {}), instructions: [] });
    } else if (stages.length === 0) {
      if (ins.op !== 'ARG') throw new Error(`Dockerfile line ${ins.line}: ${ins.op} before FROM`);
      globalArgs.push(ins);
    } else {
      stages[stages.length - 1]!.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
};
