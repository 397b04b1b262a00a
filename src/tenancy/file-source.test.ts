import { mkdirSync, mkdtempSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createFileSource } from './file-source.js';
import type { TenantSource } from './source.js';

const sources: TenantSource[] = [];
afterEach(() => {
  for (const source of sources.splice(0)) source.close();
});

/** Starts a source over `path` and `files`; each change is a resolved wait. */
async function watch(path: string, files: string[], pollIntervalMs = 60_000) {
  const reasons: string[] = [];
  const waiting: (() => void)[] = [];
  const source = createFileSource({ path, files: () => files, pollIntervalMs, settleMs: 20 });
  sources.push(source);
  await source.start({
    onChange: (reason) => {
      reasons.push(reason);
      for (const wake of waiting.splice(0)) wake();
    },
  });
  return { reasons, next: () => new Promise<void>((resolve) => waiting.push(resolve)) };
}

describe('file tenant source', () => {
  it('sees a Kubernetes volume update: the ..data symlink swapped to a new folder in one rename', async () => {
    // The layout kubelet's atomic writer makes: meshgate.yaml -> ..data/meshgate.yaml, ..data -> ..<timestamp>.
    const mount = mkdtempSync(join(tmpdir(), 'meshgate-volume-'));
    mkdirSync(join(mount, '..2026_12_01_1'));
    writeFileSync(join(mount, '..2026_12_01_1', 'meshgate.yaml'), 'version: 1\n');
    symlinkSync('..2026_12_01_1', join(mount, '..data'));
    symlinkSync('..data/meshgate.yaml', join(mount, 'meshgate.yaml'));
    const { reasons, next } = await watch(join(mount, 'meshgate.yaml'), []);

    const changed = next();
    mkdirSync(join(mount, '..2026_12_01_2'));
    writeFileSync(join(mount, '..2026_12_01_2', 'meshgate.yaml'), 'version: 2\n');
    symlinkSync('..2026_12_01_2', join(mount, '..data_tmp'));
    renameSync(join(mount, '..data_tmp'), join(mount, '..data'));
    await changed;
    expect(reasons).toEqual(['a watched file changed']);
  });

  it('sees a change to a file the config names, in another folder (a Secret volume)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-config-'));
    const secrets = mkdtempSync(join(tmpdir(), 'meshgate-secret-'));
    writeFileSync(join(dir, 'meshgate.yaml'), 'x: 1\n');
    writeFileSync(join(secrets, 'token'), 'old\n');
    const { reasons, next } = await watch(join(dir, 'meshgate.yaml'), [join(secrets, 'token')]);
    const changed = next();
    writeFileSync(join(secrets, 'token'), 'new\n');
    await changed;
    expect(reasons.length).toBe(1);
  });

  it('does not reload when a file is rewritten with the same contents', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-config-'));
    writeFileSync(join(dir, 'meshgate.yaml'), 'x: 1\n');
    writeFileSync(join(dir, 'other'), 'a\n');
    const { reasons, next } = await watch(join(dir, 'meshgate.yaml'), [join(dir, 'other')]);
    writeFileSync(join(dir, 'meshgate.yaml'), 'x: 1\n');
    // A later real change proves the rewrite was seen and passed over.
    const changed = next();
    writeFileSync(join(dir, 'other'), 'b\n');
    await changed;
    expect(reasons).toEqual(['a watched file changed']);
  });

  it('compares contents on a timer, for folders it cannot watch (not there yet, or no notifications)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-config-'));
    const later = join(mkdtempSync(join(tmpdir(), 'meshgate-unwatched-')), 'not-yet');
    writeFileSync(join(dir, 'meshgate.yaml'), 'x: 1\n');
    const { reasons, next } = await watch(join(dir, 'meshgate.yaml'), [join(later, 'token')], 50);
    const changed = next();
    mkdirSync(later);
    writeFileSync(join(later, 'token'), 'now here\n');
    await changed;
    expect(reasons).toEqual(['a watched file differs from the one loaded']);
  });
});
