/** `ratekeeper usage KEY`: a key's usage and limits, from ReportService.GetKeyUsage. */
import type { Io } from './client.js';
import { processIo } from './client.js';
import { runGroup } from './keys.js';

export const run = (argv: string[], io: Io = processIo()): Promise<number> => runGroup('usage', argv, io);
