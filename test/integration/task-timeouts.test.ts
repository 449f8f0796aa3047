import type { LogLine } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { scrape, sample } from '../helpers/metrics';
import { waitFor } from '../helpers/wait';

/**
 * Timeouts against the running services: a run's signal aborts at its task's timeoutMs; a run that
 * returns then fails its attempt as TimeoutError and is retried per its budget; a run that ignores the
 * signal is abandoned after WORKER_TIMEOUT_GRACE_MS, its slot freed, and it is counted until it returns.
 */
describe('task timeouts', () => {
  let system: System | null = null;

  afterEach(async () => {
    await system?.stop();
    system = null;
  });

  const task = (id: string) =>
    system!.database.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  const attemptsOf = (id: string) =>
    system!.database.db.selectFrom('task_attempts').selectAll().where('task_id', '=', id).orderBy('attempt').execute();

  it("fails a cooperative run at its deadline as TimeoutError, retries it on its type's backoff, then fails the task", async () => {
    // A retry on the worker's own policy would wait up to ten minutes: sleep's backoff (1 s at most) must win.
    system = await startSystem({ RETRY_BASE_MS: '600000', RETRY_MAX_MS: '600000' });
    await system.start('api');
    await Promise.all([system.start('relay'), system.start('worker')]);
    const id = await system.submit('sleep', { ms: 600_000 }, { timeoutMs: 300, maxAttempts: 2 });

    await system.waitForTerminal([id]);
    expect(await task(id)).toMatchObject({
      status: 'failed',
      attempts: 2,
      timeout_ms: 300,
      error: { name: 'TimeoutError', message: 'timeout: the attempt ran past 300 ms' },
    });
    const attempts = await attemptsOf(id);
    expect(attempts.map((a) => [a.attempt, a.outcome, (a.error as { name: string }).name])).toEqual([
      [1, 'failed', 'TimeoutError'],
      [2, 'failed', 'TimeoutError'],
    ]);
  });

  it('abandons a run that ignores its signal after the grace: the attempt fails, the slot serves the next task, and the late return changes nothing', async () => {
    system = await startSystem({ WORKER_PREFETCH: '1', WORKER_TIMEOUT_GRACE_MS: '200' });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const workerUrl = `http://127.0.0.1:${await worker.port()}`;
    const stubborn = await system.submit(
      'sleep',
      { ms: 10_000, ignoreSignal: true },
      { timeoutMs: 200, maxAttempts: 1 },
    );

    await system.waitForTerminal([stubborn]);
    // The one slot is free while the abandoned run still sleeps: an echo goes through it.
    const echo = await system.submit('echo', { after: 'abandoned' });
    await system.waitForTerminal([echo]);
    const whileOrphaned = await scrape(workerUrl);
    expect(sample(whileOrphaned, 'worker_abandoned_runs')).toBe(1);
    expect(sample(whileOrphaned, 'worker_abandoned_runs_total')).toBe(1);
    expect(await task(echo)).toMatchObject({ status: 'succeeded' });
    expect(await task(stubborn)).toMatchObject({
      status: 'failed',
      attempts: 1,
      result: null,
      error: { name: 'TimeoutError' },
    });

    // The orphan returns {sleptMs: 4000} at last: logged and discarded, the task stays as recorded.
    await worker.waitForLog(
      'the late return',
      (l) => l.message === 'an abandoned run returned; its result is discarded',
    );
    await waitFor('the gauge back at zero', async () => sample(await scrape(workerUrl), 'worker_abandoned_runs') === 0);
    const after = await task(stubborn);
    expect(after).toMatchObject({ status: 'failed', result: null, error: { name: 'TimeoutError' } });
    expect(worker.logs.find((l) => l.message?.startsWith('run abandoned'))).toMatchObject({
      taskId: stubborn,
      abandonedRuns: 1,
    });
  });

  it('never takes runs that honour their signal for abandoned when a lock holds their progress writes: the worker stays, every task ends', async () => {
    system = await startSystem({
      WORKER_LEASE_MS: '6000',
      WORKER_TIMEOUT_GRACE_MS: '200',
      WORKER_ABANDONED_RUNS_MAX: '2',
    });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const ids = await Promise.all([1, 2, 3].map(() => system!.submit('sleep', { ms: 4000 })));
    const started = async () => (await Promise.all(ids.map(task))).every((t) => t.current_step === 'sleeping');
    await waitFor('every run to have started', started);

    // Held past the fence (half the lease): the runs lose their leases while their progress writes
    // (at 2 s of 4) wait for the lock, up to DB_STATEMENT_TIMEOUT_MS.
    const locker = await system.database.pool.connect();
    const lost = (l: LogLine) =>
      l.message === "run stopped: its lease was lost, and the task is no longer this worker's";
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE');
      await waitFor('every run to have lost its lease and returned', () => worker.logs.filter(lost).length === 3);
    } finally {
      await locker.query('COMMIT');
      locker.release();
    }

    await system.waitForTerminal(ids);
    expect((await Promise.all(ids.map(task))).map((t) => t.status)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    expect(worker.logs.filter((l) => l.message?.startsWith('run abandoned'))).toEqual([]);
    expect(worker.child.exitCode).toBeNull();
  });

  it('stops consuming, drains and exits 1 once WORKER_ABANDONED_RUNS_MAX abandoned runs are still going', async () => {
    system = await startSystem({ WORKER_TIMEOUT_GRACE_MS: '100', WORKER_ABANDONED_RUNS_MAX: '1' });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const exited = new Promise<number | null>((resolve) => worker.child.once('exit', (code) => resolve(code)));
    const id = await system.submit('sleep', { ms: 60_000, ignoreSignal: true }, { timeoutMs: 100, maxAttempts: 3 });

    expect(await exited).toBe(1);
    expect(worker.logs.map((l) => l.message)).toEqual(
      expect.arrayContaining([
        'too many abandoned runs still going; the worker stops and exits so that it is restarted',
        'stopped',
      ]),
    );
    // The attempt was recorded before the exit, with its retry queued for the next worker.
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed', error: { name: 'TimeoutError' } }]);
    expect(await task(id)).toMatchObject({ status: 'pending', attempts: 1 });
  });
});
