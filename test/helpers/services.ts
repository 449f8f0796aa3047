import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { spawnChild } from '../../tools/src/harness';
import { waitFor } from './wait';

export type ServiceName = 'api' | 'relay' | 'worker' | 'all-in-one';
export type LogLine = Record<string, unknown> & { message?: string; level?: string };

export interface RunningService {
  name: ServiceName;
  child: ChildProcess;
  logs: LogLine[];
  /** Lines that were not JSON (crashes print plain text). */
  text: string[];
  /** The port it listens on (api: PORT, relay/worker: HEALTH_PORT), read from its log. */
  port(): Promise<number>;
  waitForLog(what: string, match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM (SIGKILL after a deadline) and wait for the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL: a crash, no cleanup. */
  kill(): Promise<void>;
}

const root = path.resolve(__dirname, '../..');

// Every service this test file started and that has not exited yet (test/leak-check.ts).
const running = new Set<RunningService>();

/** Kills (SIGKILL) what a test file left running, and names it: its test forgot to stop it. */
export async function killLeftovers(): Promise<string[]> {
  const left = [...running];
  await Promise.all(left.map((s) => s.kill()));
  return left.map((s) => `${s.name} (pid ${s.child.pid ?? '?'})`);
}

/** Starts a built service (`npm test` builds first) as a child process, as production runs it. */
export function startService(name: ServiceName, env: Record<string, string>): RunningService {
  const logs: LogLine[] = [];
  const text: string[] = [];
  const spawned = spawnChild({
    script: path.join(root, `services/${name}/dist/main.js`),
    env: { LOG_LEVEL: 'info', PORT: '0', HEALTH_PORT: '0', ...env },
    log: {
      pipe: (line) => {
        try {
          logs.push(JSON.parse(line) as LogLine);
        } catch {
          text.push(line);
        }
      },
    },
  });
  const child = spawned.process;
  void spawned.exited.then(() => running.delete(service));
  const service: RunningService = {
    name,
    child,
    logs,
    text,
    async port() {
      const line = await service.waitForLog(
        'listening',
        (l) => typeof l.port === 'number' && /listening/.test(l.message ?? ''),
      );
      return line.port as number;
    },
    waitForLog(what, match, timeoutMs = 20_000) {
      return waitFor(
        `${name} to log ${what}`,
        () => {
          if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}: ${text.join('\n')}`);
          return logs.find(match);
        },
        timeoutMs,
      );
    },
    // Past SHUTDOWN_TIMEOUT_MS (10 s by default) a service exits on its own; the SIGKILL is a backstop.
    stop: () => spawned.stop(30_000),
    kill: () => spawned.kill(),
  };
  running.add(service);
  return service;
}
