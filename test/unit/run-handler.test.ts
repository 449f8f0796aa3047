import { z } from 'zod';
import { defineTaskType, PermanentError, type Db, type TaskContext } from '@taskbox/shared';
import type { AnyTaskType } from '@taskbox/tasks';
import { createWorkerMetrics } from '../../services/worker/src/metrics';
import { createOrphans, type Orphans } from '../../services/worker/src/orphans';
import { checkResult, resultJson, RunAbandoned, runHandler } from '../../services/worker/src/run-handler';
import { quietLogger } from '../helpers/db';
import { capturingLogger } from '../helpers/log';

const render = defineTaskType({
  name: 'render',
  payload: z.object({}),
  result: z.object({ url: z.url(), bytes: z.number().int().min(0) }),
  run: async () => ({ url: 'https://example.com/r.pdf', bytes: 10 }),
}) as unknown as AnyTaskType;

function context(signal: AbortSignal): TaskContext<unknown> {
  return {
    taskId: 't',
    payload: {},
    attempt: 1,
    logger: quietLogger,
    signal,
    step: async () => undefined,
    progress: async () => undefined,
  };
}

// The tasks_by_status gauge is the only part of the metrics that reads Postgres, and only when scraped.
const metrics = () => createWorkerMetrics({} as Db, ['tasks']);

describe("a type's result schema", () => {
  it('passes a result that fits', () => {
    expect(checkResult(render, { url: 'https://example.com/r.pdf', bytes: 3 })).toEqual({
      url: 'https://example.com/r.pdf',
      bytes: 3,
    });
  });

  it('fails a result that does not fit with a PermanentError naming each field', () => {
    const check = () => checkResult(render, { url: 'not a url', bytes: -1 });
    expect(check).toThrow(PermanentError);
    expect(check).toThrow(/the result of "render" does not match its result schema: url: .*; bytes: /);
  });

  it('fails through runHandler as well, so the worker records it as permanent', async () => {
    const wrong = { ...render, run: async () => ({ size: 'big' }) } as AnyTaskType;
    const orphans: Orphans = { adopt: () => undefined };
    await expect(
      runHandler(wrong, context(new AbortController().signal), {
        graceMs: 10,
        resultMaxBytes: 1000,
        orphans,
        logger: quietLogger,
      }),
    ).rejects.toThrow(PermanentError);
  });
});

describe("a result's size", () => {
  it('passes a result whose JSON fits, and fails a larger one with a PermanentError naming both sizes', () => {
    expect(resultJson({ s: 'x'.repeat(10) }, 18)).toBe('{"s":"xxxxxxxxxx"}');
    const check = () => resultJson({ s: 'x'.repeat(11) }, 18);
    expect(check).toThrow(PermanentError);
    expect(check).toThrow('the result is 19 bytes of JSON, over WORKER_RESULT_MAX_BYTES (18)');
  });

  it('fails a result JSON cannot write with a PermanentError saying why, and stores no result as null', () => {
    const check = () => resultJson({ n: 10n }, 1000);
    expect(check).toThrow(PermanentError);
    expect(check).toThrow('the result is not JSON: Do not know how to serialize a BigInt');
    expect(resultJson(undefined, 1000)).toBe('null');
    expect(resultJson(() => 1, 1000)).toBe('null');
    expect(resultJson({ toJSON: () => undefined }, 1000)).toBe('null');
  });
});

describe('what a run throws', () => {
  // A Proxy whose every trap throws: `instanceof` on it throws too.
  const hostile = () =>
    new Proxy(
      {},
      {
        getPrototypeOf() {
          throw new Error('trap');
        },
        get() {
          throw new Error('trap');
        },
      },
    );

  it.each([
    ['a Proxy whose traps throw', hostile],
    ['a string', () => 'plain text'],
  ])('passes on %s as an Error, thrown at once or later', async (_name, thrown) => {
    const limits = {
      graceMs: 20,
      resultMaxBytes: 1000,
      orphans: createOrphans(5, metrics(), () => undefined),
      logger: quietLogger,
    };
    const signal = new AbortController().signal;
    const sync = {
      ...render,
      run: () => {
        throw thrown();
      },
    } as unknown as AnyTaskType;
    const later = { ...render, run: () => Promise.reject(thrown()) } as AnyTaskType;
    for (const definition of [sync, later]) {
      const err: unknown = await runHandler(definition, context(signal), limits).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(typeof (err as Error).message).toBe('string');
    }
  });

  it('passes on an Error as it was thrown, its class kept', async () => {
    const permanent = new PermanentError('no');
    const definition = { ...render, run: () => Promise.reject(permanent) } as AnyTaskType;
    const limits = {
      graceMs: 20,
      resultMaxBytes: 1000,
      orphans: createOrphans(5, metrics(), () => undefined),
      logger: quietLogger,
    };
    await expect(runHandler(definition, context(new AbortController().signal), limits)).rejects.toBe(permanent);
  });
});

describe('the grace after a run is aborted', () => {
  // What a run that ignores its signal returns, and how the test makes it return at last.
  const stubbornRuns: [string, (keep: (finish: () => void) => void) => unknown][] = [
    ['a promise', (keep) => new Promise((resolve) => keep(() => resolve({})))],
    // A `then` that answers undefined, not a promise: nothing can be chained on what it returns.
    ['a bare thenable', (keep) => ({ then: (resolve: (v: unknown) => void) => void keep(() => resolve({})) })],
  ];

  it.each(stubbornRuns)(
    'gives up on a run (%s) that ignores its signal, hands it to the orphans, and counts it gone once it returns',
    async (_name, stubbornRun) => {
      const m = metrics();
      const orphans = createOrphans(5, m, () => undefined);
      let finish = (): void => undefined;
      const stubborn = { ...render, run: () => stubbornRun((f) => (finish = f)) } as unknown as AnyTaskType;
      const controller = new AbortController();
      const running = runHandler(stubborn, context(controller.signal), {
        graceMs: 20,
        resultMaxBytes: 1000,
        orphans,
        logger: quietLogger,
      });
      controller.abort('timeout');

      await expect(running).rejects.toThrow(RunAbandoned);
      expect((await m.abandonedRunsLive.get()).values[0]?.value).toBe(1);
      finish();
      await new Promise((resolve) => setImmediate(resolve));
      expect((await m.abandonedRunsLive.get()).values[0]?.value).toBe(0);
      expect((await m.abandonedRuns.get()).values[0]?.value).toBe(1);
    },
  );

  it('waits the grace for a run that stops when aborted, and passes on what it threw', async () => {
    const adopted: unknown[] = [];
    const polite = {
      ...render,
      run: ({ signal }: TaskContext<unknown>) =>
        new Promise((_, reject) =>
          signal.addEventListener('abort', () => setTimeout(() => reject(new Error('stopped')), 5)),
        ),
    } as AnyTaskType;
    const controller = new AbortController();
    const orphans: Orphans = { adopt: (run) => adopted.push(run) };
    const running = runHandler(polite, context(controller.signal), {
      graceMs: 1000,
      resultMaxBytes: 1000,
      orphans,
      logger: quietLogger,
    });
    controller.abort('timeout');
    await expect(running).rejects.toThrow('stopped');
    expect(adopted).toEqual([]);
  });

  it('logs the error of an abandoned run whose message throws when read, and of a revoked Proxy', async () => {
    const { logger, lines } = capturingLogger();
    const orphans = createOrphans(5, metrics(), () => undefined);
    const unreadable = Object.defineProperty(new Error('x'), 'message', {
      get() {
        throw new Error('getter boom');
      },
    });
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    orphans.adopt(Promise.reject(unreadable), logger);
    orphans.adopt(Promise.reject(proxy), logger);
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines.filter((l) => l.level === 'warn').map((l) => l.error)).toEqual([
      'an error whose message throws when read',
      '<Revoked Proxy>',
    ]);
  });

  it('calls for a restart once, when the cap of abandoned runs still going is reached', () => {
    let overflows = 0;
    const orphans = createOrphans(2, metrics(), () => overflows++);
    const never = () => new Promise<never>(() => undefined);
    orphans.adopt(never(), quietLogger);
    expect(overflows).toBe(0);
    orphans.adopt(never(), quietLogger);
    orphans.adopt(never(), quietLogger);
    expect(overflows).toBe(1);
  });
});
