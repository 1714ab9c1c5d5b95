/**
 * Reloads the configuration when its files change. A bad reload is reported and the caller keeps
 * the config it has; a good one replaces it whole.
 *
 * Change detection: fs.watch on the directory (recursive) or on a file's parent directory, so
 * editors that write a new file and rename it over the old one, and Kubernetes ConfigMap volumes
 * (which swap a `..data` symlink), are seen; a slow poll backs it up on filesystems where watch
 * events are lost. Every trigger re-reads the files and compares a digest of their contents, so
 * only a real change reloads.
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, watch } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { RuntimeConfig } from '../services/deps.js';
import { type ConfigFile, type LoadOptions, parseConfigFiles, readConfigFiles } from './load.js';

export interface WatchOptions extends LoadOptions {
  /** Quiet time after the last event before reloading (editors and swaps write in bursts). */
  debounceMs?: number;
  /** Re-check this often even without events; 0 disables. */
  pollMs?: number;
  /**
   * The files the caller's config was parsed from. Changes are then measured against them, so an edit
   * made between the caller's load and the start of the watch is still reported.
   */
  baseline?: readonly ConfigFile[];
}

const digest = (files: readonly ConfigFile[]): string => {
  const h = createHash('sha256');
  for (const f of files) h.update(f.file).update('\0').update(f.text).update('\0');
  return h.digest('hex');
};

/**
 * Watches `path` (a file or a directory, as loadConfig takes) and calls onChange with each new valid
 * config, or onError (with a ConfigError when the files are invalid) keeping the old one. Changes are
 * measured against options.baseline, else against the files as they are when the watch starts.
 * Returns a function that stops watching.
 */
export function watchConfig(
  path: string,
  onChange: (config: RuntimeConfig) => void,
  onError: (error: Error) => void,
  options: WatchOptions = {},
): () => void {
  const debounceMs = options.debounceMs ?? 200;
  const pollMs = options.pollMs ?? 5_000;
  let stopped = false;
  let last = options.baseline ? digest(options.baseline) : undefined;
  let lastError: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let again = false;
  let watcher: FSWatcher | undefined;

  const check = async (report: boolean): Promise<void> => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const files = await readConfigFiles(path);
      const d = digest(files);
      if (d !== last) {
        last = d;
        if (report) {
          const config = parseConfigFiles(files, options);
          lastError = undefined;
          if (!stopped) onChange(config);
        }
      }
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      // A broken state is reported once, not on every poll.
      if (report && !stopped && err.message !== lastError) onError(err);
      lastError = err.message;
    } finally {
      running = false;
      if (again && !stopped) {
        again = false;
        schedule();
      }
    }
  };

  const schedule = (): void => {
    if (stopped) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      void check(true).then(ensureWatcher);
    }, debounceMs);
  };

  // (Re)opens the fs watcher; it dies when its directory is removed or replaced.
  const ensureWatcher = async (): Promise<void> => {
    if (stopped || watcher) return;
    try {
      const isDir = (await stat(path)).isDirectory();
      if (stopped || watcher) return;
      const w = watch(isDir ? path : dirname(path), { recursive: isDir, persistent: false }, schedule);
      w.on('error', () => {
        w.close();
        if (watcher === w) watcher = undefined;
      });
      watcher = w;
    } catch {
      // Not there (yet): the poll retries.
    }
  };

  const poll = pollMs > 0 ? setInterval(schedule, pollMs) : undefined;
  poll?.unref();
  void check(options.baseline !== undefined).then(ensureWatcher);

  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    if (poll) clearInterval(poll);
    watcher?.close();
    watcher = undefined;
  };
}
