import { spawn } from 'node:child_process';
import { getEventListeners, once } from 'node:events';
import path from 'node:path';
import { gate, onShutdownSignal, resource, startAll, stopAll, unlessAborted, type Service } from '@taskbox/shared';
import { quietLogger } from '../helpers/db';

/** A part that records when it starts and stops; `stop` may fail or hang. */
function part(name: string, log: string[], stop: () => Promise<void> = async () => undefined): Service {
  return {
    start: async () => void log.push(`start ${name}`),
    stop: async () => {
      log.push(`stop ${name}`);
      await stop();
    },
  };
}

describe('the lifecycle contract', () => {
  it('a gate starts the parts after it once ready answers yes, saying once that it waits', async () => {
    const log: string[] = [];
    const answers = [false, false, true];
    const parts = [
      gate(
        async () => answers.shift() ?? true,
        5,
        () => log.push('waiting'),
      ),
      part('a', log),
    ];
    await startAll(parts);
    expect(log).toEqual(['waiting', 'start a']);
  });

  it('a gate stopped while it waits starts nothing after it', async () => {
    const log: string[] = [];
    const waiting = gate(
      async () => false,
      5,
      () => log.push('waiting'),
    );
    const starting = startAll([waiting, part('a', log)]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await waiting.stop();
    await expect(starting).rejects.toThrow(/stopped while waiting/);
    expect(log).toEqual(['waiting']);
  });

  it('starts the parts in order and stops them in reverse, each once, even when one fails to stop', async () => {
    const log: string[] = [];
    let closed = 0;
    const parts = [
      resource(async () => void closed++),
      part('a', log),
      part('b', log, () => Promise.reject(new Error('b broke'))),
      part('c', log),
    ];
    await startAll(parts);
    expect(await stopAll(parts, 1000, quietLogger)).toBe(false);
    await stopAll(parts, 1000, quietLogger);
    expect(log.slice(0, 6)).toEqual(['start a', 'start b', 'start c', 'stop c', 'stop b', 'stop a']);
    expect(closed).toBe(1);
  });

  it('gives up at the deadline when a part hangs, answering false', async () => {
    const parts = [part('hung', [], () => new Promise(() => undefined))];
    const started = Date.now();
    expect(await stopAll(parts, 100, quietLogger)).toBe(false);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('answers exit code 0 after a clean stop, and 1 at once for a second signal', async () => {
    let release: (clean: boolean) => void = () => undefined;
    const shutdown = onShutdownSignal(quietLogger, () => new Promise((resolve) => (release = resolve)));
    const first = shutdown('SIGTERM');
    expect(await shutdown('SIGINT')).toBe(1);
    release(true);
    expect(await first).toBe(0);
  });
});

describe('unlessAborted', () => {
  it('answers the promise, or undefined at the abort, and leaves no listener on the signal', async () => {
    const run = new AbortController();
    for (let i = 0; i < 1000; i++) expect(await unlessAborted(Promise.resolve(i), run.signal)).toBe(i);
    await expect(unlessAborted(Promise.reject(new Error('refused')), run.signal)).rejects.toThrow('refused');
    expect(getEventListeners(run.signal, 'abort')).toHaveLength(0);

    const pending = unlessAborted(new Promise<number>(() => undefined), run.signal);
    expect(getEventListeners(run.signal, 'abort')).toHaveLength(1);
    run.abort();
    await expect(pending).resolves.toBeUndefined();
    await expect(unlessAborted(Promise.resolve(1), run.signal)).resolves.toBeUndefined();
  });
});

describe('serve, on a throw that no code catches', () => {
  // A service built on serve (packages/shared's build) whose code throws once it has started.
  const service = (strayThrow: string) => `
    const { createLogger, serve } = require(${JSON.stringify(path.resolve(__dirname, '../../packages/shared/dist'))});
    const logger = createLogger('stray', { LOG_LEVEL: 'info', LOG_FORMAT: 'json' });
    const work = setInterval(() => undefined, 1000);
    const part = { start: async () => undefined, stop: async () => { clearInterval(work); logger.info('part drained'); } };
    void serve([part], { logger, deadlineMs: 5000, started: () => setTimeout(() => { ${strayThrow} }, 10) });`;

  it.each([
    ['a stray rejection', "void Promise.reject(new Error('stray'));", 'unhandled rejection'],
    ['a throw from a timer', "throw new Error('stray');", 'uncaught exception'],
  ])('logs %s with its stack, drains the parts and exits 1', async (_name, strayThrow, what) => {
    const child = spawn(process.execPath, ['-e', service(strayThrow)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    const lines = out
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(code).toBe(1);
    expect(lines.map((l) => [l.level, l.message])).toEqual([
      ['error', `${what}; the process drains and exits`],
      ['info', 'shutting down'],
      ['info', 'part drained'],
      ['info', 'stopped'],
    ]);
    expect(lines[0]).toMatchObject({
      service: 'stray',
      error: 'stray',
      stack: expect.stringContaining('Error: stray'),
    });
  });
});
