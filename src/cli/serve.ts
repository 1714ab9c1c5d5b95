import { ConfigError } from '../config/errors.js';
import { tuneGc } from '../gc.js';
import { createLogger } from '../log.js';
import { type ServerParts, startServer } from '../server.js';
import { parseSettings, type Settings, SettingsError, settingsHelp } from '../settings.js';
import { CredentialError } from '../transport/auth.js';

const USAGE = `Usage: ratekeeper serve --config PATH [options]

Serves Envoy's RLS v3 and the Ratekeeper services on a gRPC port and an HTTP port (Connect, gRPC-Web,
/healthz), with Prometheus metrics on a third. Every flag can be given as the environment variable
beside it; the flag wins.

  flag                     environment variable             meaning
${settingsHelp()}
  --help                                                    this text

Credentials (environment only): RATEKEEPER_ADMIN_TOKENS (or RATEKEEPER_ADMIN_TOKENS_FILE) guards
AdminService and ReportService; RATEKEEPER_RLS_TOKENS (or …_FILE), when set, guards RLS and Usage; both
as name:token,name:token. API keys are hashed with the policy's pepper (by default $RATEKEEPER_KEY_PEPPER).
`;

/**
 * Serves until SIGTERM or SIGINT, then drains and stops; resolves with the exit code. A second
 * signal while draining stops waiting and exits 1.
 */
export const serveUntilSignal = async (settings: Settings, parts: ServerParts = {}): Promise<number> => {
  const log = parts.log ?? createLogger(settings.logLevel);
  // A stray rejection (a bug in some background task) is logged, not fatal: Envoy keeps its answers.
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    server = await startServer(settings, { ...parts, log });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ratekeeper: invalid config:\n${err.message}\n`);
      return 1;
    }
    if (err instanceof CredentialError) {
      process.stderr.write(`ratekeeper: invalid credentials: ${err.message}\n`);
      return 1;
    }
    const { code, message } = err as NodeJS.ErrnoException;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      process.stderr.write(`ratekeeper: cannot listen: ${message}\n`);
      return 1;
    }
    throw err;
  }
  return new Promise<number>((resolve) => {
    let draining = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (draining) {
        log.warn({ signal }, 'second signal while draining: exiting now');
        resolve(1);
        return;
      }
      draining = true;
      log.info({ signal }, 'signal received');
      server.stop().then(
        () => resolve(0),
        (err) => {
          log.error({ err }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
};

export const run = async (argv: string[]): Promise<number> => {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  let settings: Settings;
  try {
    settings = parseSettings(argv);
  } catch (err) {
    if (!(err instanceof SettingsError)) throw err;
    process.stderr.write(`ratekeeper serve: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  tuneGc();
  return serveUntilSignal(settings);
};
