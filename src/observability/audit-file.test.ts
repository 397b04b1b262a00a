import { closeSync, existsSync, fstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createAuditFile, droppedAuditLines, workerAuditFile, type AuditFile } from './audit-file.js';
import { createLogger } from './logger.js';

const opened: AuditFile[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((file) => file.close()));
});

function auditIn(options: { maxSize: number; maxFiles: number; maxBufferedBytes?: number }): AuditFile {
  const file = createAuditFile({ file: join(mkdtempSync(join(tmpdir(), 'meshgate-audit-')), 'audit.log'), ...options });
  opened.push(file);
  return file;
}

const flushed = (file: AuditFile): Promise<void> => new Promise((resolve) => file.flush(() => resolve()));
/** A line of exactly 100 bytes, numbered. */
const line = (n: number): string => `{"n":${n},"pad":"${'x'.repeat(100 - 16 - String(n).length)}"}\n`;
const numberOf = (l: string): number => (JSON.parse(l) as { n: number }).n;
const linesOf = (path: string): string[] => readFileSync(path, 'utf8').split('\n').filter((l) => l !== '');
/** Closes a descriptor the test opened; one the code under test closed already (EBADF) leaves its assertion to speak. */
const closeQuietly = (fd: number): void => {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
};

describe('the audit file', () => {
  it('appends lines and rotates before a line would pass maxSize, keeping maxFiles old files', async () => {
    const audit = auditIn({ maxSize: 1024, maxFiles: 2 });
    expect(line(1)).toHaveLength(100);
    for (let n = 1; n <= 45; n++) audit.write(line(n));
    await flushed(audit);

    // 10 lines (1,000 bytes) fit in 1 KiB: 45 lines make five files, of which three are kept.
    const files = [audit.file, `${audit.file}.1`, `${audit.file}.2`];
    for (const path of files) expect(statSync(path).size).toBeLessThanOrEqual(1024);
    expect(existsSync(`${audit.file}.3`)).toBe(false);
    expect(linesOf(`${audit.file}.2`).map(numberOf)).toEqual([21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
    expect(linesOf(`${audit.file}.1`).map(numberOf)).toEqual([31, 32, 33, 34, 35, 36, 37, 38, 39, 40]);
    expect(linesOf(audit.file).map(numberOf)).toEqual([41, 42, 43, 44, 45]);
    expect(audit.dropped()).toBe(0);
  });

  it('appends to a file that is already there, counting its size', async () => {
    const first = auditIn({ maxSize: 1024, maxFiles: 1 });
    for (let n = 1; n <= 8; n++) first.write(line(n));
    await first.close();
    const again = createAuditFile({ file: first.file, maxSize: 1024, maxFiles: 1 });
    opened.push(again);
    for (let n = 9; n <= 12; n++) again.write(line(n));
    await flushed(again);
    expect(linesOf(`${first.file}.1`)).toHaveLength(10);
    expect(linesOf(first.file).map(numberOf)).toEqual([11, 12]);
  });

  it('keeps no old file with maxFiles 0', async () => {
    const audit = auditIn({ maxSize: 1024, maxFiles: 0 });
    for (let n = 1; n <= 25; n++) audit.write(line(n));
    await flushed(audit);
    expect(existsSync(`${audit.file}.1`)).toBe(false);
    expect(linesOf(audit.file).map(numberOf)).toEqual([21, 22, 23, 24, 25]);
  });

  it('holds a bounded amount while the disk is busy: past it, lines are dropped and counted', async () => {
    const audit = auditIn({ maxSize: 1024 * 1024, maxFiles: 1, maxBufferedBytes: 1_000 });
    const before = droppedAuditLines();
    // Written in one turn: the first line goes to the disk, ten wait, the rest do not fit.
    for (let n = 1; n <= 100; n++) audit.write(line(n));
    await flushed(audit);
    const written = linesOf(audit.file).length;
    expect(written).toBeLessThanOrEqual(11);
    expect(audit.dropped()).toBe(100 - written);
    expect(droppedAuditLines() - before).toBe(100 - written);
  });

  it('counts the lines a full disk refuses, and says so once per run of failures', async () => {
    if (!existsSync('/dev/full')) throw new Error('this test needs /dev/full (Linux)');
    const errors: string[] = [];
    const full = createAuditFile({ file: '/dev/full', maxSize: 1024 * 1024, maxFiles: 1, onError: (err) => errors.push((err as NodeJS.ErrnoException).code ?? '') });
    opened.push(full);
    for (let n = 1; n <= 3; n++) {
      full.write(line(n));
      await flushed(full);
    }
    expect(full.dropped()).toBe(3);
    expect(errors).toEqual(['ENOSPC']);
  });

  it('after a rotation and a reopen both fail, never touches the descriptor number it closed (now another file\'s), drops and counts the lines, and resumes in a new file once it can', async () => {
    const errors: string[] = [];
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-audit-'));
    const audit = createAuditFile({ file: join(dir, 'audit.log'), maxSize: 1024, maxFiles: 2, onError: (err) => errors.push((err as NodeJS.ErrnoException).code ?? '') });
    opened.push(audit);
    for (let n = 1; n <= 10; n++) audit.write(line(n));
    await flushed(audit);
    const before = droppedAuditLines();

    // The directory disappears (a volume unmounted, an operator's rm -rf): the rotation closes the
    // file, then the rename fails; so would opening the file again.
    rmSync(dir, { recursive: true, force: true });
    audit.write(line(11));
    audit.write(line(12));
    await flushed(audit);
    // Another part of the process opens a file (or accepts a socket): it gets the lowest free
    // number, the one the audit file just closed.
    const unrelatedPath = join(mkdtempSync(join(tmpdir(), 'meshgate-unrelated-')), 'unrelated');
    const unrelated = openSync(unrelatedPath, 'w');
    try {
      audit.write(line(13));
      await flushed(audit);
      expect(() => fstatSync(unrelated)).not.toThrow();
      expect(audit.dropped()).toBe(3);
      expect(droppedAuditLines() - before).toBe(3);
      expect(errors).toEqual(['ENOENT']); // one run of failures, said once

      mkdirSync(dir);
      audit.write(line(14));
      await flushed(audit);
      expect(linesOf(audit.file).map(numberOf)).toEqual([14]);
      expect(audit.dropped()).toBe(3);
      await audit.close();
      expect(() => fstatSync(unrelated)).not.toThrow();
      expect(readFileSync(unrelatedPath, 'utf8')).toBe('');
    } finally {
      closeQuietly(unrelated);
    }
  });

  it('closes nothing at shutdown after a failed rotation left no file open', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-audit-'));
    const audit = createAuditFile({ file: join(dir, 'audit.log'), maxSize: 1024, maxFiles: 1 });
    opened.push(audit);
    for (let n = 1; n <= 10; n++) audit.write(line(n));
    await flushed(audit);
    rmSync(dir, { recursive: true, force: true });
    audit.write(line(11)); // would rotate: the rotation closes the file, then fails
    await flushed(audit);
    const unrelated = openSync(join(mkdtempSync(join(tmpdir(), 'meshgate-unrelated-')), 'unrelated'), 'w');
    try {
      await audit.close();
      expect(() => fstatSync(unrelated)).not.toThrow();
    } finally {
      closeQuietly(unrelated);
    }
  });

  it('refuses a path it cannot open, saying which and why', () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-audit-'));
    expect(() => createAuditFile({ file: join(dir, 'missing', 'audit.log'), maxSize: 1024, maxFiles: 1 })).toThrow(
      `logging.audit.file: cannot open ${join(dir, 'missing', 'audit.log')} for appending: ENOENT`,
    );
    mkdirSync(join(dir, 'a-directory'));
    expect(() => createAuditFile({ file: join(dir, 'a-directory'), maxSize: 1024, maxFiles: 1 })).toThrow(/EISDIR/);
  });

  it('names one file per worker slot', () => {
    expect(workerAuditFile('/var/log/meshgate/audit.log', 2)).toBe('/var/log/meshgate/audit-worker-2.log');
    expect(workerAuditFile('/var/log/audit', 1)).toBe('/var/log/audit-worker-1');
  });
});

describe('a logger with an audit file', () => {
  it('sends the audit lines to the file whatever the level, and the rest to its stream at its level', async () => {
    const audit = auditIn({ maxSize: 1024 * 1024, maxFiles: 1 });
    const out: string[] = [];
    const logger = createLogger('warn', { write: (l: string) => out.push(l) }, undefined, audit);
    logger.info({ tenant: 'acme', path: '/debug/syncz' }, 'request');
    logger.child({ role: 'worker' }).info({ tenant: 'acme', verb: 'watch' }, 'kube long-running request started');
    logger.error({ tenant: 'acme' }, 'request failed inside meshgate');
    logger.info('meshgate is serving');
    logger.warn({ path: '"msg":"request"}' }, 'not a request');
    await flushed(audit);

    const inFile = linesOf(audit.file).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(inFile.map((l) => l.msg)).toEqual(['request', 'kube long-running request started', 'request failed inside meshgate']);
    expect(inFile[1]).toMatchObject({ role: 'worker', service: 'meshgate', level: 'info' });
    // stdout keeps its level: warn and above.
    expect(out.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(['request failed inside meshgate', 'not a request']);
  });
});
