#!/usr/bin/env node
/** `ratekeeper <command>`: each command lives in its own module, loaded only when called. */

type Command = { run(argv: string[]): Promise<number> };

/** Commands other teams ship; a build without the module answers "not available". */
const optional = (module: string) => (): Promise<Command> => import(`./cli/${module}.js`);
/** A module serving several commands: its run() gets the command name first. */
const named = (module: string, name: string) => async (): Promise<Command> => {
  const mod = await optional(module)();
  return { run: (argv) => mod.run([name, ...argv]) };
};

const COMMANDS: Record<string, { load: () => Promise<Command>; help: string }> = {
  serve: { load: () => import('./cli/serve.js'), help: 'run the server (ratekeeper serve --help)' },
  keys: { load: optional('keys'), help: 'manage API keys through AdminService' },
  usage: { load: optional('usage'), help: "show a key's usage" },
  flags: { load: named('report', 'flags'), help: 'list and review abuse flags' },
  top: { load: named('report', 'top'), help: 'top keys by usage' },
  watch: { load: named('report', 'watch'), help: 'stream usage alerts' },
};

const usage = (): string =>
  `Usage: ratekeeper <command> [options]\n\nCommands:\n${Object.entries(COMMANDS)
    .map(([name, c]) => `  ${name.padEnd(8)} ${c.help}`)
    .join('\n')}\n`;

const main = async (argv: string[]): Promise<number> => {
  const [name, ...rest] = argv;
  if (name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return 0;
  }
  const command = name === undefined ? undefined : COMMANDS[name];
  if (!command) {
    process.stderr.write(`${name === undefined ? '' : `ratekeeper: unknown command ${name}\n\n`}${usage()}`);
    return 2;
  }
  let mod: Command;
  try {
    mod = await command.load();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    process.stderr.write(`ratekeeper: command ${name} is not available in this build\n\n${usage()}`);
    return 2;
  }
  return mod.run(rest);
};

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`ratekeeper: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
