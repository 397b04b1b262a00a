/**
 * The config file as a tenant source: the file and every file it names (certificates, keys, CA
 * bundles, tokens, JWKS and path keys) are watched, and a change to any of them reloads.
 *
 * Change notifications come from watching the folders that hold the files, not the files: a
 * Kubernetes ConfigMap or Secret volume swaps its `..data` symlink to a new folder in one rename,
 * which a watch on the file itself never sees (it keeps pointing at the old inode). Notifications
 * can be lost (some file systems have none), so the contents are also compared on a timer. Either
 * way a reload happens only when the contents differ from what was last seen, and a content that
 * failed is not retried until it changes again.
 */
import { hash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import type { TenantSource, TenantSourceEvents } from './source.js';

export interface FileSourceOptions {
  /** The config file. */
  readonly path: string;
  /** The files the config in use names (absolute paths); asked again after each change. */
  readonly files: () => readonly string[];
  /** How often contents are compared, besides notifications. */
  readonly pollIntervalMs: number;
  /** Notifications arriving closer together than this are taken as one change. */
  readonly settleMs?: number;
}

export function createFileSource(options: FileSourceOptions): TenantSource {
  const settleMs = options.settleMs ?? 100;
  const watchers = new Map<string, FSWatcher>();
  let seen = '';
  let events: TenantSourceEvents | undefined;
  let poll: NodeJS.Timeout | undefined;
  let settle: NodeJS.Timeout | undefined;
  let closed = false;

  const watched = (): string[] => [options.path, ...options.files()];

  const digest = (): string => {
    const parts = watched().map((file) => {
      try {
        return `${file}\0${readFileSync(file, 'utf8')}`;
      } catch (err) {
        return `${file}\0!${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`;
      }
    });
    return hash('sha256', parts.join('\0\0'), 'base64url');
  };

  /** Watches the folder of every file in use, and only those. */
  const watchFolders = (): void => {
    const folders = new Set(watched().map((file) => dirname(file)));
    for (const [folder, watcher] of watchers) {
      if (!folders.has(folder)) {
        watcher.close();
        watchers.delete(folder);
      }
    }
    for (const folder of folders) {
      if (watchers.has(folder)) continue;
      try {
        const watcher = watch(folder, { persistent: false }, () => schedule());
        // A folder that goes away (an unmounted volume) is left to the timer.
        watcher.on('error', () => {
          watcher.close();
          watchers.delete(folder);
        });
        watchers.set(folder, watcher);
      } catch {
        // Not watchable here (no such folder yet, no inotify): the timer still compares.
      }
    }
  };

  const check = (reason: string): void => {
    if (closed || !events) return;
    const now = digest();
    if (now === seen) return;
    // What was on disk when the reload began: a write during the reload differs from it, and is
    // picked up next (by notification or timer) rather than taken as loaded.
    seen = now;
    events.onChange(reason);
    // The config in use may name other files now (a different set digests differently: one
    // more reload, which changes nothing, then quiet).
    watchFolders();
  };

  const schedule = (): void => {
    if (settle) return;
    settle = setTimeout(() => {
      settle = undefined;
      check('a watched file changed');
    }, settleMs);
    settle.unref();
  };

  return {
    name: 'file',
    start(handlers) {
      events = handlers;
      seen = digest();
      watchFolders();
      poll = setInterval(() => check('a watched file differs from the one loaded'), options.pollIntervalMs);
      poll.unref();
      return Promise.resolve();
    },
    close() {
      closed = true;
      clearInterval(poll);
      clearTimeout(settle);
      for (const watcher of watchers.values()) watcher.close();
      watchers.clear();
    },
  };
}
