/**
 * What Envoy does with the parts of deploy/ that decide a request, modelled closely enough to test
 * the files against a real server: the route's rate_limits actions (Envoy's router_ratelimit /
 * ratelimit_config), the Lua key normalisation, header_to_metadata's response rules, the
 * stream-done hits_addend format, and local_reply_config's CEL mappers. Anything the model does
 * not know throws, so a config edit it cannot follow fails the tests instead of passing unseen.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LuaFactory } from 'wasmoon';
import { parseAllDocuments } from 'yaml';

export const ROOT = join(import.meta.dirname, '..', '..');
export const at = (...parts: string[]): string => join(ROOT, ...parts);

type Json = Record<string, unknown>;

export const isRecord = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Every YAML document of a file, as plain values; a YAML error fails loudly. */
export const yamlDocs = (path: string): unknown[] => {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'));
  if (!Array.isArray(docs)) return [];
  return docs.map((d) => {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as unknown;
  });
};

/** The value at a path of keys / indexes; throws naming the path when it is not there. */
export const get = (v: unknown, ...path: (string | number)[]): unknown => {
  let cur = v;
  for (const [i, p] of path.entries()) {
    const next =
      typeof p === 'number' ? (Array.isArray(cur) ? cur[p] : undefined) : isRecord(cur) ? cur[p] : undefined;
    if (next === undefined) throw new Error(`no ${path.slice(0, i + 1).join('.')}`);
    cur = next;
  }
  return cur;
};

export const list = (v: unknown, ...path: (string | number)[]): unknown[] => {
  const x = get(v, ...path);
  if (!Array.isArray(x)) throw new Error(`${path.join('.')} is not a list`);
  return x;
};

/** Request headers as Envoy's header map: lower-case names, one value each. */
export type Headers = Record<string, string>;

export const lowerHeaders = (h: Headers): Headers =>
  Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));

export interface Entry {
  key: string;
  value: string;
}

export interface Descriptor {
  entries: Entry[];
  /** Set only by a RateLimit with hits_addend (Envoy's descriptor-level hits_addend). */
  hitsAddend?: number;
}

/** Dynamic metadata: namespace → key → value, as filters set it on the stream. */
export type Metadata = Record<string, Record<string, number | string>>;

/**
 * Field names of Envoy's v3 messages that the model follows: another one is either a typo Envoy
 * would reject at load, or a feature the model would silently ignore.
 */
const onlyFields = (v: Json, message: string, fields: readonly string[]): void => {
  for (const k of Object.keys(v)) if (!fields.includes(k)) throw new Error(`${message}.${k} not modelled`);
};

/** Envoy's `%DYNAMIC_METADATA(ns:key)%` with nothing around it: the only format used here. */
const hitsFromFormat = (format: string, metadata: Metadata): number | undefined => {
  const m = /^%DYNAMIC_METADATA\(([^:()]+):([^:()]+)\)%$/.exec(format);
  if (!m) throw new Error(`hits_addend format not modelled: ${format}`);
  const v = metadata[m[1]!]?.[m[2]!];
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : Number.NaN;
  // Envoy drops the descriptor (and logs) when the value is missing, not a number, or out of range.
  return Number.isFinite(n) && n >= 0 && n <= 1e9 ? Math.trunc(n) : undefined;
};

/**
 * The descriptors Envoy's rate-limit filter sends for one request: request time
 * (`onStreamDone` false) or stream done (true). Mirrors RateLimitPolicy::populateDescriptors: an
 * action that cannot produce its entry drops the whole descriptor, except a request_headers action
 * with skip_if_absent, whose entry is just left out.
 */
export const buildDescriptors = (
  rateLimits: readonly unknown[],
  headers: Headers,
  onStreamDone: boolean,
  metadata: Metadata = {},
): Descriptor[] => {
  const h = lowerHeaders(headers);
  const out: Descriptor[] = [];
  for (const rl of rateLimits) {
    if (!isRecord(rl)) throw new Error('rate_limits entry is not a mapping');
    onlyFields(rl, 'RateLimit', ['actions', 'apply_on_stream_done', 'hits_addend']);
    if ((rl['apply_on_stream_done'] === true) !== onStreamDone) continue;
    const entries: Entry[] = [];
    let dropped = false;
    for (const action of list(rl, 'actions')) {
      if (!isRecord(action) || Object.keys(action).length !== 1)
        throw new Error('an action has exactly one kind');
      const rh = action['request_headers'];
      const gk = action['generic_key'];
      if (isRecord(rh)) {
        onlyFields(rh, 'RateLimit.Action.RequestHeaders', [
          'header_name',
          'descriptor_key',
          'skip_if_absent',
        ]);
        const name = String(get(rh, 'header_name')).toLowerCase();
        const value = h[name];
        if (value !== undefined) entries.push({ key: String(get(rh, 'descriptor_key')), value });
        else if (rh['skip_if_absent'] !== true) {
          dropped = true;
          break;
        }
      } else if (isRecord(gk)) {
        onlyFields(gk, 'RateLimit.Action.GenericKey', ['descriptor_value', 'descriptor_key']);
        entries.push({
          key: String(gk['descriptor_key'] ?? 'generic_key'),
          value: String(get(gk, 'descriptor_value')),
        });
      } else {
        throw new Error(`action not modelled: ${Object.keys(action)[0]}`);
      }
    }
    if (dropped) continue;
    if (entries.length === 0)
      throw new Error('a descriptor with no entries: every rate limit needs a required action');
    const d: Descriptor = { entries };
    const ha = rl['hits_addend'];
    if (isRecord(ha)) {
      onlyFields(ha, 'RateLimit.HitsAddend', ['number', 'format']);
      if (typeof ha['format'] === 'string') {
        const n = hitsFromFormat(ha['format'], metadata);
        if (n === undefined) continue;
        d.hitsAddend = n;
      } else if (typeof ha['number'] === 'number') {
        d.hitsAddend = ha['number'];
      } else {
        throw new Error('hits_addend needs a format or a number');
      }
    }
    out.push(d);
  }
  return out;
};

/** The inline Lua of a Lua filter config. */
export const luaSource = (luaConfig: unknown): string =>
  String(get(luaConfig, 'default_source_code', 'inline_string'));

const luaFactory = new LuaFactory();

/** A Lua string literal for a header name or value (printable ASCII, as HTTP headers are here). */
const luaString = (s: string): string => {
  if (!/^[\x20-\x7e]*$/.test(s)) throw new Error(`header text outside printable ASCII: ${JSON.stringify(s)}`);
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
};

/**
 * Runs a Lua filter's real script (Lua 5.4 in wasm; Envoy runs LuaJIT, and the script keeps to what
 * both share) on the request headers, through a handle with Envoy's `headers():get / replace /
 * remove`. Returns the headers the next filter sees.
 */
export const runLuaOnRequest = async (source: string, headers: Headers): Promise<Headers> => {
  const lua = await luaFactory.createEngine();
  try {
    await lua.doString(source);
    const input = Object.entries(lowerHeaders(headers))
      .map(([k, v]) => `[${luaString(k)}] = ${luaString(v)}`)
      .join(', ');
    // Input is printable ASCII, so control characters can separate names, values and headers.
    const out = (await lua.doString(`
      local hs = { ${input} }
      local headers = {
        get = function(_, k) return hs[string.lower(k)] end,
        replace = function(_, k, v) hs[string.lower(k)] = v end,
        add = function(_, k, v) hs[string.lower(k)] = v end,
        remove = function(_, k) hs[string.lower(k)] = nil end,
      }
      envoy_on_request({ headers = function(_) return headers end })
      local out = {}
      for k, v in pairs(hs) do out[#out + 1] = k .. "\\1" .. v end
      return table.concat(out, "\\2")
    `)) as string;
    if (out === '') return {};
    return Object.fromEntries(out.split('\x02').map((kv) => kv.split('\x01') as [string, string]));
  } finally {
    lua.global.close();
  }
};

/** header_to_metadata response_rules: header present → its value, missing → the configured value. */
export const applyResponseRules = (rules: readonly unknown[], responseHeaders: Headers): Metadata => {
  const h = lowerHeaders(responseHeaders);
  const md: Metadata = {};
  const set = (kv: unknown, value: string | undefined): void => {
    if (!isRecord(kv) || value === undefined) return;
    const ns = String(kv['metadata_namespace'] ?? 'envoy.filters.http.header_to_metadata');
    const type = kv['type'] ?? 'STRING';
    if (type !== 'NUMBER' && type !== 'STRING')
      throw new Error(`header_to_metadata type ${String(type)} not modelled`);
    // A NUMBER that does not parse is not stored (Envoy logs and skips the rule).
    if (type === 'NUMBER' && !Number.isFinite(Number(value))) return;
    md[ns] ??= {};
    md[ns][String(get(kv, 'key'))] = type === 'NUMBER' ? Number(value) : value;
  };
  for (const r of rules) {
    if (!isRecord(r)) throw new Error('a response rule is a mapping');
    const v = h[String(get(r, 'header')).toLowerCase()];
    // A configured value wins over the header's own (Envoy's KeyValuePair.value).
    const fixed = (kv: unknown): string | undefined =>
      isRecord(kv) && kv['value'] !== undefined ? String(kv['value']) : undefined;
    if (v !== undefined) set(r['on_header_present'], fixed(r['on_header_present']) ?? v);
    else set(r['on_header_missing'], fixed(r['on_header_missing']));
  }
  return md;
};

/**
 * The three CEL shapes the local-reply mappers use, on response headers: `== 'X'`, `!= 'X'` and
 * `in [...]`. A missing header is a CEL error, which makes Envoy's filter not match.
 */
export const evalCel = (expr: string, responseHeaders: Headers): boolean => {
  const h = lowerHeaders(responseHeaders);
  const m = /^\s*response\.headers\['([a-z0-9-]+)'\]\s*(==|!=|in)\s*(.+?)\s*$/s.exec(expr);
  if (!m) throw new Error(`CEL expression not modelled: ${expr}`);
  const value = h[m[1]!];
  if (value === undefined) return false;
  const str = (s: string): string => {
    const q = /^'([^'\\]*)'$/.exec(s.trim());
    if (!q) throw new Error(`CEL string literal not modelled: ${s}`);
    return q[1]!;
  };
  if (m[2] === '==') return value === str(m[3]!);
  if (m[2] === '!=') return value !== str(m[3]!);
  const items = /^\[(.*)\]$/s.exec(m[3]!);
  if (!items) throw new Error(`CEL list not modelled: ${m[3]}`);
  return items[1]!.split(',').map(str).includes(value);
};

export interface LocalReply {
  status: number;
  body: string;
  contentType: string | undefined;
}

/**
 * local_reply_config for the rate-limit filter's local reply: the first mapper whose filter matches
 * rewrites the status and formats the body (`%LOCAL_REPLY_BODY%` is the raw_body unchanged).
 */
export const applyLocalReply = (
  config: unknown,
  status: number,
  responseHeaders: Headers,
  body: string,
): LocalReply => {
  for (const mapper of list(config, 'mappers')) {
    const ext = get(mapper, 'filter', 'extension_filter');
    if (get(ext, 'name') !== 'envoy.access_loggers.extension_filters.cel')
      throw new Error('mapper filter not modelled');
    if (!evalCel(String(get(ext, 'typed_config', 'expression')), responseHeaders)) continue;
    const fmt = isRecord(mapper) ? mapper['body_format_override'] : undefined;
    const text =
      fmt === undefined ? '%LOCAL_REPLY_BODY%' : String(get(fmt, 'text_format_source', 'inline_string'));
    if (text !== '%LOCAL_REPLY_BODY%') throw new Error(`body format not modelled: ${text}`);
    const code =
      isRecord(mapper) && typeof mapper['status_code'] === 'number' ? mapper['status_code'] : status;
    return {
      status: code,
      body,
      contentType: fmt === undefined ? undefined : (get(fmt, 'content_type') as string),
    };
  }
  return { status, body, contentType: undefined };
};

/** The parts of deploy/envoy/envoy.yaml the tests read. */
export const envoyParts = () => {
  const [doc] = yamlDocs(at('deploy', 'envoy', 'envoy.yaml'));
  const hcm = get(doc, 'static_resources', 'listeners', 0, 'filter_chains', 0, 'filters', 0, 'typed_config');
  const filters = list(hcm, 'http_filters');
  const filter = (name: string): unknown => {
    const f = filters.find((x) => isRecord(x) && x['name'] === name);
    if (!f) throw new Error(`envoy.yaml has no ${name}`);
    return get(f, 'typed_config');
  };
  const clusters = list(doc, 'static_resources', 'clusters');
  const cluster = (name: string): unknown => {
    const c = clusters.find((x) => isRecord(x) && x['name'] === name);
    if (!c) throw new Error(`envoy.yaml has no cluster ${name}`);
    return c;
  };
  return {
    doc,
    hcm,
    filterNames: filters.map((f) => String(get(f, 'name'))),
    filter,
    cluster,
    rateLimits: list(hcm, 'route_config', 'virtual_hosts', 0, 'routes', 0, 'route', 'rate_limits'),
    localReply: get(hcm, 'local_reply_config'),
  };
};

/** The parts of deploy/istio/envoyfilter.yaml the tests read. */
export const istioParts = () => {
  const [doc] = yamlDocs(at('deploy', 'istio', 'envoyfilter.yaml'));
  const patches = list(doc, 'spec', 'configPatches');
  const httpFilters = patches
    .filter((p) => get(p, 'applyTo') === 'HTTP_FILTER')
    .map((p) => get(p, 'patch', 'value') as Json);
  const filter = (name: string): unknown => {
    const f = httpFilters.find((x) => x['name'] === name);
    if (!f) throw new Error(`envoyfilter.yaml has no ${name}`);
    return get(f, 'typed_config');
  };
  const vhost = patches.find((p) => get(p, 'applyTo') === 'VIRTUAL_HOST');
  const hcm = patches.find((p) => get(p, 'applyTo') === 'NETWORK_FILTER');
  return {
    doc,
    patches,
    filterNames: httpFilters.map((f) => String(f['name'])),
    filter,
    rateLimits: list(vhost, 'patch', 'value', 'rate_limits'),
    localReply: get(hcm, 'patch', 'value', 'typed_config', 'local_reply_config'),
  };
};
