import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';

const run = promisify(execFile);

const listFiles = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else out.push(relative(dir, join(d, e.name)));
    }
  };
  await walk(dir);
  return out.sort();
};

let tmp: string | undefined;
afterAll(() => (tmp ? rm(tmp, { recursive: true, force: true }) : undefined));

it('gen/ is what `buf generate` writes from proto/ (regenerate with npm run generate)', async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rk-gen-'));
  const out = join(tmp, 'gen');
  // The project's own template, pointed at a temp dir, so the test checks the real settings.
  const template = parse(await readFile('buf.gen.yaml', 'utf8')) as { plugins: { out: string }[] };
  for (const p of template.plugins) p.out = out;
  const templatePath = join(tmp, 'buf.gen.yaml');
  await writeFile(templatePath, stringify(template));
  await run('npx', ['buf', 'generate', '--template', templatePath], { timeout: 60_000 });

  const [want, have] = await Promise.all([listFiles(out), listFiles('gen')]);
  expect(have).toEqual(want);
  for (const f of want) {
    const [a, b] = await Promise.all([readFile(join(out, f)), readFile(join('gen', f))]);
    expect(b.equals(a), `gen/${f} is stale`).toBe(true);
  }
});
