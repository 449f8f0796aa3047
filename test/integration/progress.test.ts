import { getEventListeners } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createDb, createPool, createTaskNotifier } from '@taskbox/shared';
import { MAX_STEP_LENGTH, progressReporter } from '../../services/worker/src/progress';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';
import { waitFor } from '../helpers/wait';

describe("a run's step and progress", () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  const running = () => insertTaskFixture(database.db, { type: 'sleep', status: 'processing', attempts: 1 });
  const row = (id: string) =>
    database.db
      .selectFrom('tasks')
      .select(['current_step', 'progress', 'version'])
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
  const reporter = (
    id: string,
    logger = quietLogger,
    db = database.db,
    pool = database.pool,
    signal = new AbortController().signal,
  ) => progressReporter(db, createTaskNotifier(pool, logger), id, 1, logger, signal);

  it('merges the calls of a tight loop into a few writes, ending at the last values', async () => {
    const id = await running();
    const before = Number((await row(id)).version);
    const report = reporter(id);
    const calls: Promise<void>[] = [];
    for (let i = 1; i <= 2000; i++) calls.push(report.step(`item ${i}`), report.progress(i / 2000));
    await Promise.all(calls);
    const after = await row(id);
    expect(after).toMatchObject({ current_step: 'item 2000', progress: 1 });
    // The first call's write, then one for everything called while it was in flight.
    expect(Number(after.version) - before).toBeLessThanOrEqual(2);
  });

  it('drops a progress that is no number, and mends a step Postgres could not store', async () => {
    const id = await running();
    const report = reporter(id);
    await report.progress(0.25);
    await report.progress(Number.NaN);
    await report.step('a\u0000b');
    expect(await row(id)).toMatchObject({ current_step: 'a\ufffdb', progress: 0.25 });
    await report.step('x'.repeat(MAX_STEP_LENGTH + 500));
    expect((await row(id)).current_step).toHaveLength(MAX_STEP_LENGTH);
    // A name that throws when turned into text is dropped, and the call still resolves.
    await expect(report.step(Symbol('no text') as unknown as string)).resolves.toBeUndefined();
  });

  it('never rejects while Postgres is unavailable, and says so once per run', async () => {
    const id = await running();
    const pool = createPool('postgres://postgres@127.0.0.1:1/none', quietLogger, {
      max: 1,
      statementTimeoutMs: 1000,
      connectionTimeoutMillis: 500,
    });
    const { logger, lines } = capturingLogger();
    const report = reporter(id, logger, createDb(pool), pool);
    try {
      await expect(Promise.all([report.step('one'), report.progress(0.5)])).resolves.toBeDefined();
      await expect(report.step('two')).resolves.toBeUndefined();
      expect(lines.filter((l) => l.message === 'progress not recorded')).toHaveLength(1);
    } finally {
      await pool.end();
    }
  });

  it('stops waiting for a write a lock holds once the run is aborted, and the write still lands', async () => {
    const id = await running();
    const run = new AbortController();
    const report = reporter(id, quietLogger, database.db, database.pool, run.signal);
    const locker = await database.pool.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE');
      const held = report.progress(0.5);
      run.abort('lost');
      // Resolves while the lock is still held: a run that honours its signal returns within the grace.
      await expect(held).resolves.toBeUndefined();
      expect(await report.step('after the abort')).toBeUndefined();
    } finally {
      await locker.query('COMMIT');
      locker.release();
    }
    await waitFor('the held write to land', async () => (await row(id)).current_step === 'after the abort');
    expect((await row(id)).progress).toBe(0.5);
  });

  it("keeps no memory per call for the run's lifetime: a long run reporting often does not grow the worker", async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const id = await running();
    const run = new AbortController();
    const report = reporter(id, quietLogger, database.db, database.pool, run.signal);
    const heap = () => {
      gc();
      return process.memoryUsage().heapUsed;
    };
    const calls = async (n: number) => {
      for (let i = 0; i < n; i += 1000) {
        const pending = Array.from({ length: 1000 }, (_, k) => report.progress((i + k) / n));
        // One listener on the run's signal a batch of calls, not one a call.
        expect(getEventListeners(run.signal, 'abort').length).toBeLessThanOrEqual(2);
        await Promise.all(pending);
      }
    };
    await calls(10_000);
    const before = heap();
    await calls(200_000);
    // Racing the run's abort at every call kept each race's reaction on it until the run ended: 60 MB here.
    expect(heap() - before).toBeLessThan(8 * 1024 * 1024);
  });
});
