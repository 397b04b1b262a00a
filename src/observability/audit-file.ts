/**
 * The audit file: log lines appended to a file that is rotated by size. When the file would grow
 * past `maxSize`, it becomes `<file>.1` (`.1` becomes `.2`, and so on; `<file>.<maxFiles>` is
 * deleted), and a new `<file>` is started. Every file therefore holds at most `maxSize` bytes,
 * unless one line alone is longer.
 *
 * Lines wait in a bounded queue and are written by one write at a time, never blocking the event
 * loop. Rotation happens between writes, when nothing is in flight, so the sizes are exact. A disk
 * that is slow or full costs at most `maxBufferedBytes`: past that, new lines are dropped and
 * counted (meshgate_audit_lines_dropped_total), as for stdout.
 *
 * A rotation that fails (the directory is gone, the disk refuses a rename) leaves no file open: the
 * lines queued then are dropped and counted, and the next line opens `<file>` again first (or is
 * dropped too, while it cannot be opened). A descriptor is forgotten as soon as it is closed, so a
 * number the kernel has since given to a socket is never written to or closed.
 *
 * One process owns one file: with `serve --workers N`, each worker writes its own (see
 * `workerAuditFile`), since two processes renaming the same file would lose lines.
 */
import { close as closeFd, closeSync, fstat as fstatFd, fstatSync, open as openFd, openSync, write as writeFd } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { promisify } from 'node:util';

const open = promisify(openFd);
const close = promisify(closeFd);
const fstat = promisify(fstatFd);
const write = promisify(writeFd);

export interface AuditFileOptions {
  readonly file: string;
  readonly maxSize: number;
  /** Rotated files kept besides the current one (0: the current file is emptied instead). */
  readonly maxFiles: number;
  readonly maxBufferedBytes?: number;
  /**
   * A write or a rotation failed; the lines it held are counted as dropped. Called once per run of
   * failures (a full disk fails every write until it has room), not once per write.
   */
  readonly onError?: (err: Error) => void;
}

export interface AuditFile {
  readonly file: string;
  /** Queues one line (ending in a newline); drops it when the queue is full. */
  write(line: string): void;
  /** Calls back when every line queued so far is written (or dropped). */
  flush(callback?: (err?: Error) => void): void;
  /** Lines dropped so far: the queue was full, or a write failed. */
  dropped(): number;
  /** Writes what is queued, then closes the file; later lines are dropped. */
  close(): Promise<void>;
}

const DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/** One write takes up to this much of the queue. */
const MAX_WRITE_BYTES = 256 * 1024;

/** Lines dropped by every audit file of this process: meshgate_audit_lines_dropped_total. */
let droppedTotal = 0;
export function droppedAuditLines(): number {
  return droppedTotal;
}

/** The file a worker writes: `audit.log` becomes `audit-worker-2.log` for the worker in slot 2. */
export function workerAuditFile(file: string, slot: number): string {
  const extension = extname(file);
  return join(dirname(file), `${basename(file, extension)}-worker-${slot}${extension}`);
}

/** Throws, with the path and the reason, unless the file can be opened (or created) for appending. */
export function checkAuditFile(file: string): void {
  closeSync(openAudit(file));
}

function openAudit(file: string): number {
  try {
    return openSync(file, 'a', 0o640);
  } catch (err) {
    throw new Error(`logging.audit.file: cannot open ${file} for appending: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Opens (or creates) the file for appending, synchronously: a path that cannot be written is an
 * error at startup, with the path and the reason, not a silent gap in the audit trail.
 */
export function createAuditFile(options: AuditFileOptions): AuditFile {
  const { file, maxSize, maxFiles } = options;
  const maxBuffered = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  /** Undefined while no file is open: after a failed rotation, until a line opens it again. */
  let fd: number | undefined = openAudit(file);
  let size = fstatSync(fd).size;
  const queue: Buffer[] = [];
  let queuedBytes = 0;
  let busy = false;
  let dropped = 0;
  let closed = false;
  let waiting: ((err?: Error) => void)[] = [];

  let failing = false;
  const failed = (err: Error): void => {
    if (!failing) options.onError?.(err);
    failing = true;
  };
  const drop = (lines: number): void => {
    dropped += lines;
    droppedTotal += lines;
  };
  const countLines = (chunk: Buffer): number => {
    let lines = 0;
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
    return lines;
  };

  /** The next chunk of whole lines to write, no bigger than the room left in the current file (at least one line). */
  const takeChunk = (room: number): Buffer => {
    const parts: Buffer[] = [];
    let bytes = 0;
    while (queue.length > 0) {
      const next = queue[0] as Buffer;
      if (parts.length > 0 && (bytes + next.length > room || bytes + next.length > MAX_WRITE_BYTES)) break;
      parts.push(next);
      bytes += next.length;
      queue.shift();
    }
    queuedBytes -= bytes;
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, bytes);
  };

  /** Forgets the descriptor before closing it: whether or not close fails, the number is no longer ours. */
  const closeCurrent = async (): Promise<void> => {
    const current = fd;
    fd = undefined;
    if (current !== undefined) await close(current);
  };

  /** Opens `<file>` when no file is open (after a failed rotation); false, the failure said, when it cannot. */
  const ensureOpen = async (): Promise<boolean> => {
    if (fd !== undefined) return true;
    let opened: number | undefined;
    try {
      opened = await open(file, 'a', 0o640);
      size = (await fstat(opened)).size;
      fd = opened;
      return true;
    } catch (err) {
      if (opened !== undefined) await close(opened).catch(() => undefined);
      failed(err as Error);
      return false;
    }
  };

  /** Without a file to write to, what is queued now is lost: counted. */
  const dropQueued = (): void => {
    const lost = queue.splice(0);
    queuedBytes = 0;
    drop(lost.reduce((n, chunk) => n + countLines(chunk), 0));
  };

  const rotate = async (): Promise<void> => {
    await closeCurrent();
    if (maxFiles === 0) {
      await rm(file, { force: true });
    } else {
      await rm(`${file}.${maxFiles}`, { force: true });
      for (let n = maxFiles - 1; n >= 1; n--) await rename(`${file}.${n}`, `${file}.${n + 1}`).catch(ignoreMissing);
      await rename(file, `${file}.1`);
    }
    fd = await open(file, 'a', 0o640);
    size = 0;
  };

  const pump = async (): Promise<void> => {
    busy = true;
    while (queue.length > 0) {
      if (!(await ensureOpen())) {
        dropQueued();
        continue;
      }
      const first = queue[0] as Buffer;
      if (size > 0 && size + first.length > maxSize) {
        try {
          await rotate();
        } catch (err) {
          dropQueued();
          failed(err as Error);
          continue;
        }
      }
      const target = fd as number; // ensureOpen or rotate opened it
      const chunk = takeChunk(Math.max(maxSize - size, 1));
      try {
        let offset = 0;
        while (offset < chunk.length) {
          const { bytesWritten } = await write(target, chunk, offset);
          offset += bytesWritten;
        }
        size += chunk.length;
        failing = false;
      } catch (err) {
        drop(countLines(chunk));
        failed(err as Error);
      }
    }
    busy = false;
    const done = waiting;
    waiting = [];
    for (const callback of done) callback();
  };

  const flush = (callback?: (err?: Error) => void): void => {
    if (!busy && queue.length === 0) callback?.();
    else if (callback) waiting.push(callback);
  };

  return {
    file,
    write(line) {
      if (closed) {
        drop(1);
        return;
      }
      const chunk = Buffer.from(line, 'utf8');
      if (queuedBytes + chunk.length > maxBuffered) {
        drop(1);
        return;
      }
      queue.push(chunk);
      queuedBytes += chunk.length;
      if (!busy) void pump();
    },
    flush,
    dropped: () => dropped,
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((resolve) => flush(() => resolve()));
      await closeCurrent();
    },
  };
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}
