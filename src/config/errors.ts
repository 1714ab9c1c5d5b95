import type { Document, LineCounter } from 'yaml';
import { isMap, isNode, isPair, isScalar, isSeq } from 'yaml';
import type { z } from 'zod';

/** One problem in a config file: where it is and what is wrong. */
export interface ConfigIssue {
  file: string;
  /** 1-based; absent when the problem has no single place (e.g. an unreadable file). */
  line?: number;
  /** e.g. `descriptors[0].rate_limit.unit`; absent for whole-file problems. */
  field?: string;
  message: string;
}

const formatIssue = (i: ConfigIssue): string =>
  `${i.file}${i.line === undefined ? '' : `:${i.line}`}: ${i.field ? `${i.field}: ` : ''}${i.message}`;

/**
 * A configuration that cannot be used. The message has one line per issue,
 * `file:line: field: message`, so an operator can jump straight to it.
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly issues: readonly ConfigIssue[];
  constructor(issues: ConfigIssue | readonly ConfigIssue[]) {
    const list = Array.isArray(issues) ? (issues as readonly ConfigIssue[]) : [issues as ConfigIssue];
    super(list.map(formatIssue).join('\n'));
    this.issues = list;
  }
}

export type FieldPath = readonly (string | number)[];

/** `['descriptors', 0, 'rate_limit', 'unit']` → `descriptors[0].rate_limit.unit`. */
export const formatPath = (path: FieldPath): string => {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? p : `.${p}`;
  }
  return out;
};

/**
 * One YAML document of a config file, able to say on which line a field sits.
 * Parsers of each document kind (generic domains, the inference policy) report through it.
 */
export class ConfigSource {
  constructor(
    readonly file: string,
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  /**
   * The line of the node at `path`, or of its nearest existing ancestor when the field is
   * missing. With `key`, the line of that key inside the map at `path` (for unknown keys).
   */
  lineOf(path: FieldPath, key?: string): number | undefined {
    let node: unknown = this.doc.contents;
    let offset = rangeStart(node);
    for (const p of path) {
      const next = child(node, p);
      if (next === undefined) break;
      node = next.value;
      offset = next.offset ?? rangeStart(node) ?? offset;
    }
    if (key !== undefined && isMap(node)) {
      const pair = node.items.find((it) => isScalar(it.key) && String(it.key.value) === key);
      if (pair && isNode(pair.key) && pair.key.range) offset = pair.key.range[0];
    }
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }

  issue(path: FieldPath, message: string, key?: string): ConfigIssue {
    const field = formatPath(key === undefined ? path : [...path, key]);
    const line = this.lineOf(path, key);
    return { file: this.file, ...(line === undefined ? {} : { line }), ...(field ? { field } : {}), message };
  }

  /** Maps zod issues (their paths are document paths) to located config issues. */
  fromZod(error: z.ZodError): ConfigIssue[] {
    const out: ConfigIssue[] = [];
    for (const i of error.issues) {
      const path = i.path.filter((p): p is string | number => typeof p !== 'symbol');
      if (i.code === 'unrecognized_keys') {
        for (const k of i.keys) out.push(this.issue(path, 'unknown field', k));
      } else {
        out.push(this.issue(path, i.message));
      }
    }
    return out.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
  }
}

const rangeStart = (node: unknown): number | undefined =>
  isNode(node) && node.range ? node.range[0] : undefined;

/**
 * The child at `p` and where to point at it: for a map entry its key, the line an operator reads as
 * the field (a block map value starts on the next line; a null value has no range).
 */
const child = (node: unknown, p: string | number): { value: unknown; offset?: number } | undefined => {
  if (isMap(node)) {
    const pair = node.items.find(
      (it) => isPair(it) && isScalar(it.key) && String(it.key.value) === String(p),
    );
    if (!pair) return undefined;
    const offset = rangeStart(pair.key);
    return { value: pair.value, ...(offset === undefined ? {} : { offset }) };
  }
  if (isSeq(node) && typeof p === 'number') {
    const item = node.items[p];
    return item === undefined ? undefined : { value: item };
  }
  return undefined;
};
