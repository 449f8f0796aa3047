// One way to run a built service (or a bench server) as a child process, shared by the tests
// (test/helpers/services.ts) and the bench (bench/lib/env.mjs): spawn with an explicit env, wait until
// it listens, stop with SIGTERM and SIGKILL after a deadline, or kill outright.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';

/**
 * Where the child's stdout and stderr go. `pipe`: to this process, line by line (tests read the
 * logs). `file`: straight to a file, not through this process. Node writes to a pipe synchronously on
 * Linux, so under load a service would stall on every log line whenever the reader is busy.
 */
export type LogDestination = { pipe: (line: string) => void } | { file: string };

export interface SpawnOptions {
  /** The script node runs. */
  script: string;
  /** The child's whole environment, apart from PATH (nothing else leaks in from this process). */
  env: Record<string, string>;
  log: LogDestination;
  /** Flags for node itself, e.g. --cpu-prof. */
  nodeArgs?: string[];
}

export interface Child {
  process: ChildProcess;
  /** Resolves with the exit code (null when a signal ended it). */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL if it has not exited after `deadlineMs`; resolves with the exit code. */
  stop(deadlineMs?: number): Promise<number | null>;
  /** SIGKILL: a crash, no cleanup. */
  kill(): Promise<void>;
}

const STOP_DEADLINE_MS = 15_000;

const running = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null;

function openLog(log: LogDestination): { stdio: 'pipe' | number; close(): void } {
  if ('pipe' in log) return { stdio: 'pipe', close: () => undefined };
  const fd = openSync(log.file, 'w');
  return { stdio: fd, close: () => closeSync(fd) };
}

export function spawnChild({ script, env, log, nodeArgs = [] }: SpawnOptions): Child {
  const output = openLog(log);
  const child = spawn(process.execPath, [...nodeArgs, script], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', output.stdio, output.stdio],
  });
  // The child holds its own copy of the descriptor.
  output.close();
  if ('pipe' in log) {
    for (const stream of [child.stdout, child.stderr]) {
      if (stream) readline.createInterface({ input: stream }).on('line', log.pipe);
    }
  }
  // 'close', not 'exit': by then its output is read too, so its last log lines (a shutdown's) are there.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    process: child,
    exited,
    async stop(deadlineMs = STOP_DEADLINE_MS) {
      if (running(child)) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), deadlineMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    async kill() {
      if (running(child)) child.kill('SIGKILL');
      await exited;
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.end();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

/** Resolves when `port` on 127.0.0.1 accepts connections; fails when the child exits first. */
export async function waitUntilListening(child: Child, port: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!running(child.process)) throw new Error(`port ${port}: process exited ${child.process.exitCode}`);
    if (await accepts(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`port ${port} did not accept connections within ${timeoutMs} ms`);
}
