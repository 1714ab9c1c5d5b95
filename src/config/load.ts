/**
 * Loads the configuration from a file or a directory of YAML files into one immutable
 * RuntimeConfig. Every YAML document is either a generic domain (envoyproxy/ratelimit format) or
 * the inference policy; any problem is a ConfigError naming file, line and field.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { LineCounter, parseAllDocuments } from 'yaml';
import type { RuntimeConfig } from '../services/deps.js';
import { ConfigError, type ConfigIssue, ConfigSource } from './errors.js';
import { type GenericDomain, parseGenericDomain } from './generic.js';
import { type InferencePolicy, PolicyError, parseInferencePolicy } from './inference.js';

export interface ConfigFile {
  /** The path as found: the configured path, or it joined with the file's place in the directory. */
  file: string;
  text: string;
}

export interface LoadOptions {
  /** Where the inference policy reads its secrets (pepper, static keys); default process.env. */
  env?: NodeJS.ProcessEnv;
}

const YAML_FILE = /\.ya?ml$/i;

// Stable wording whichever call failed (stat, readdir, open), so a watcher reports a state once.
const cannotRead = (file: string, e: unknown): ConfigError => {
  const code = (e as NodeJS.ErrnoException).code;
  const why =
    code === 'ENOENT'
      ? 'no such file or directory'
      : code === 'EACCES'
        ? 'permission denied'
        : (e as Error).message;
  return new ConfigError({ file, message: `cannot read: ${why}` });
};

/**
 * Reads the config files: `path` itself when it is a file, else every *.yaml / *.yml below it,
 * sorted by path. Names starting with `.` are skipped: Kubernetes ConfigMap volumes keep the real
 * files in `..data` / `..<timestamp>` directories beside symlinks to them, which would load twice.
 */
export async function readConfigFiles(path: string): Promise<ConfigFile[]> {
  let info: Awaited<ReturnType<typeof stat>>;
  try {
    info = await stat(path);
  } catch (e) {
    throw cannotRead(path, e);
  }
  if (!info.isDirectory()) return [{ file: path, text: await readText(path) }];
  const found: string[] = [];
  await walk(path, found);
  found.sort((a, b) => (relative(path, a) < relative(path, b) ? -1 : 1));
  return Promise.all(found.map(async (file) => ({ file, text: await readText(file) })));
}

async function walk(dir: string, out: string[]): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((e: unknown) => {
    throw cannotRead(dir, e);
  });
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    // Symlinks (ConfigMap volumes) are followed.
    const isDir =
      e.isDirectory() || (e.isSymbolicLink() && (await stat(p).catch(() => undefined))?.isDirectory());
    if (isDir) await walk(p, out);
    else if (YAML_FILE.test(e.name)) out.push(p);
  }
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw cannotRead(file, e);
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parses and validates config files (already read) into one RuntimeConfig; throws ConfigError. */
export function parseConfigFiles(files: readonly ConfigFile[], options: LoadOptions = {}): RuntimeConfig {
  const issues: ConfigIssue[] = [];
  const domains = new Map<string, GenericDomain>();
  /** Where each domain was configured, `file:line`, for duplicate errors. */
  const domainAt = new Map<string, { file: string; line: number; at: string }>();
  let inference: { policy: InferencePolicy; at: string } | undefined;

  for (const { file, text } of files) {
    const lines = new LineCounter();
    const docs = parseAllDocuments(text, { lineCounter: lines, prettyErrors: false });
    // An empty file yields an EmptyStream: nothing to load.
    if (!Array.isArray(docs)) continue;
    for (const doc of docs) {
      if (doc.errors.length > 0) {
        for (const err of doc.errors) {
          const line = lines.linePos(err.pos[0]).line;
          issues.push({
            file,
            ...(line === undefined ? {} : { line }),
            message: err.message.split('\n')[0]!,
          });
        }
        continue;
      }
      const source = new ConfigSource(file, doc, lines);
      const js: unknown = doc.toJS();
      if (js === null || js === undefined) continue;
      const at = `${file}:${source.lineOf([]) ?? 1}`;
      try {
        if (!isRecord(js)) {
          throw new ConfigError(
            source.issue(
              [],
              'expected a mapping: a generic domain (domain, descriptors) or the inference policy',
            ),
          );
        }
        if (
          js['kind'] === 'inference-policy' ||
          (js['kind'] === undefined && ('tiers' in js || 'models' in js))
        ) {
          const policy = parseInference(js, source, options.env);
          if (inference) {
            issues.push(source.issue([], `a second inference policy (the first is at ${inference.at})`));
          } else {
            inference = { policy, at };
          }
        } else if (js['kind'] !== undefined) {
          issues.push(
            source.issue(['kind'], `unknown kind '${String(js['kind'])}' (expected inference-policy)`),
          );
        } else if ('domain' in js) {
          const d = parseGenericDomain(js, source);
          const first = domainAt.get(d.domain);
          if (first) {
            issues.push(
              source.issue(['domain'], `duplicate domain '${d.domain}' (already configured at ${first.at})`),
            );
          } else {
            const line = source.lineOf(['domain']) ?? 1;
            domains.set(d.domain, d);
            domainAt.set(d.domain, { file, line, at: `${file}:${line}` });
          }
        } else {
          issues.push(
            source.issue(
              [],
              'unknown document: expected a generic domain (domain, descriptors) or the inference policy (kind: inference-policy)',
            ),
          );
        }
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        issues.push(...e.issues);
      }
    }
  }

  if (inference) {
    const clash = domainAt.get(inference.policy.domain);
    if (clash) {
      issues.push({
        file: clash.file,
        line: clash.line,
        field: 'domain',
        message: `domain '${inference.policy.domain}' is the inference policy's domain (${inference.at})`,
      });
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return Object.freeze({ domains, ...(inference ? { inference: inference.policy } : {}) });
}

function parseInference(
  doc: unknown,
  source: ConfigSource,
  env: NodeJS.ProcessEnv | undefined,
): InferencePolicy {
  try {
    return parseInferencePolicy(doc, source, env);
  } catch (e) {
    if (!(e instanceof PolicyError)) throw e;
    throw new ConfigError({
      file: e.file,
      ...(e.line === undefined ? {} : { line: e.line }),
      ...(e.field && e.field !== '(document)' ? { field: e.field } : {}),
      message: e.detail,
    });
  }
}

/** Reads and validates the config at `path` (a file or a directory); throws ConfigError. */
export async function loadConfig(path: string, options: LoadOptions = {}): Promise<RuntimeConfig> {
  return parseConfigFiles(await readConfigFiles(path), options);
}
