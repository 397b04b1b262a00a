/**
 * A stdout nobody reads (a stuck log shipper, a full pipe) costs meshgate a bounded amount of
 * memory: past the buffer's bound, log lines are dropped and counted, and logging never blocks.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const CHILD = `
  const { createLogger, droppedLogLines } = await import(${JSON.stringify(new URL('../dist/observability/logger.js', import.meta.url).href)});
  const logger = createLogger('info', undefined, 256 * 1024);
  const before = process.memoryUsage().rss;
  for (let i = 0; i < 200000; i++) logger.info({ i, path: '/debug/syncz', outcome: 'OK' }, 'request');
  await new Promise((r) => setTimeout(r, 300));
  process.stderr.write(JSON.stringify({ dropped: droppedLogLines(), grownMiB: (process.memoryUsage().rss - before) / 1048576 }) + '\\n');
  // Exiting would flush stdout synchronously, into a pipe that is never read: the test ends it.
  setInterval(() => undefined, 1000);
`;

describe('logging to a stdout that is not read', () => {
  it('drops and counts lines past the bound instead of growing or blocking', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Never read stdout: the pipe fills (64 KiB) and stays full.
    child.stdout.pause();
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('\n')) resolve();
      });
      child.on('exit', (code) => reject(new Error(`exited ${String(code)} before reporting: ${stderr}`)));
    });
    child.kill('SIGKILL');
    child.stdout.destroy();
    const result = JSON.parse(stderr.trim().split('\n').pop() ?? '{}') as { dropped: number; grownMiB: number };
    // 200,000 lines of about 130 bytes (26 MB) against 64 KiB of pipe and 256 KiB of buffer.
    expect(result.dropped).toBeGreaterThan(190_000);
    expect(result.grownMiB).toBeLessThan(64);
  }, 30_000);
});
