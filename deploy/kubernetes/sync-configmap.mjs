// Rewrites configmap.yaml from the shipped config/ (every *.yaml below it, by file name), so the
// ConfigMap stays the policy the server ships. Run from anywhere: node deploy/kubernetes/sync-configmap.mjs
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const configDir = join(here, '..', '..', 'config');
const target = join(here, 'configmap.yaml');

const walk = (dir) =>
  readdirSync(dir)
    .filter((name) => !name.startsWith('.'))
    .flatMap((name) => {
      const p = join(dir, name);
      return statSync(p).isDirectory() ? walk(p) : /\.ya?ml$/.test(name) ? [p] : [];
    });

const files = walk(configDir).sort((a, b) => (basename(a) < basename(b) ? -1 : 1));
const names = files.map((f) => basename(f));
if (new Set(names).size !== names.length) throw new Error(`config/ has two files of one name: ${names}`);

// The part above `data:` is kept; each file becomes a literal block scalar, indented under its name.
const head = readFileSync(target, 'utf8').split(/^data:$/m)[0];
const block = (text) => {
  if (!text.endsWith('\n') || text.endsWith('\n\n')) throw new Error('a config file must end with exactly one newline');
  if (/[ \t]$/m.test(text)) throw new Error('a config file has trailing spaces, which a block scalar would change');
  return text
    .split('\n')
    .slice(0, -1)
    .map((line) => (line === '' ? '' : `    ${line}`))
    .join('\n');
};
const data = files.map((f) => `  ${basename(f)}: |\n${block(readFileSync(f, 'utf8'))}\n`).join('');
writeFileSync(target, `${head}data:\n${data}`);
console.log(`${target}: ${names.join(', ')}`);
