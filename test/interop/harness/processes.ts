/**
 * The real programs of the interop suite as child processes: each one's output goes to its own
 * log file (read by the tests, and kept for whoever debugs a failure), and every process started
 * is stopped by `stopAll`, last started first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';

export const BIN = resolve(import.meta.dirname, '../../../.interop/bin');

export function binary(name: string): string {
  return join(BIN, name);
}

export function hasBinary(name: string): boolean {
  return existsSync(binary(name));
}

export interface Program {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Everything it has written so far, stdout and stderr together. */
  log(): string;
  /** Resolves when it has exited. */
  readonly exited: Promise<number | null>;
  stop(): Promise<void>;
}

const running: Program[] = [];

export interface StartOptions {
  readonly args: readonly string[];
  readonly cwd: string;
  readonly env?: Record<string, string>;
  readonly logDir: string;
}

export function start(name: string, command: string, options: StartOptions): Program {
  const logFile = join(options.logDir, `${name}.log`);
  const out = createWriteStream(logFile);
  const child = spawn(command, options.args, {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: options.cwd, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(out, { end: false });
  child.stderr.pipe(out, { end: false });
  const exited = new Promise<number | null>((done) => {
    child.once('error', (err) => {
      out.write(`\n[harness] could not start ${command}: ${err.message}\n`);
      done(null);
    });
    child.once('exit', (code) => done(code));
  });
  const program: Program = {
    name,
    child,
    logFile,
    log: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      out.end();
    },
  };
  running.push(program);
  return program;
}

export async function stopAll(): Promise<void> {
  for (const program of running.splice(0).reverse()) await program.stop();
}

/**
 * Polls `check` until it returns a value (not undefined), the program exits, or `timeoutMs`
 * passes; then throws with the end of the program's log.
 */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, options: { timeoutMs?: number; program?: Program } = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let last: unknown;
  for (;;) {
    if (options.program && options.program.child.exitCode !== null) {
      throw new Error(`${options.program.name} exited (${String(options.program.child.exitCode)}) while waiting for ${what}:\n${tail(options.program.log())}`);
    }
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? ` (last error: ${last.message})` : '';
      throw new Error(`timed out waiting for ${what}${detail}${options.program ? `\n${tail(options.program.log())}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function tail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}

/**
 * A free loopback port for a program to take later. It is drawn below the kernel's ephemeral range
 * (32768 and up by default): a port from port 0 would be free now, but outgoing connections take
 * ephemeral ports all the time, and istiod binds its ports only after its caches have synced, so
 * one was taken first once ("bind: address already in use"). Ports handed out here are not reused.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (handedOut.has(port)) continue;
    if (await canBind(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free loopback port between 20000 and 32000');
}

const handedOut = new Set<number>();

function canBind(port: number): Promise<boolean> {
  return new Promise((done) => {
    const server = createServer();
    server.once('error', () => done(false));
    server.listen(port, '127.0.0.1', () => server.close(() => done(true)));
  });
}
