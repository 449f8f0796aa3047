import { sql } from 'kysely';
import { connectAmqp } from '@taskbox/shared';
import { claimBatch } from '../../services/relay/src/outbox-sql';
import { createPublisher } from '../../services/relay/src/publisher';
import { amqpUrl, testTopology } from '../helpers/amqp';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { quietLogger } from '../helpers/db';
import type { LogLine } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

describe('delivery guarantees with the services as separate processes', () => {
  let system: System;

  let proxy: FaultProxy | null = null;

  afterEach(async () => {
    // Also ends a blackhole: a worker whose queries never return could not shut down.
    await proxy?.restore();
    await system.stop();
    await proxy?.close();
    proxy = null;
  });

  /** A worker whose Postgres connections go through a proxy the test can cut or blackhole. */
  async function startWorkerBehindProxy(env: Record<string, string> = {}) {
    const url = new URL(system.database.url);
    proxy = await startFaultProxy(url.hostname, Number(url.port || 5432));
    return system.start('worker', { DATABASE_URL: proxy.url(system.database.url), ...env });
  }

  const attemptsOf = (id: string) =>
    system.database.db.selectFrom('task_attempts').selectAll().where('task_id', '=', id).orderBy('attempt').execute();

  it('re-publishes rows whose relay died between publish and mark, and the worker absorbs the duplicates', async () => {
    system = await startSystem({ RELAY_CONFIRM_TIMEOUT_MS: '300' }); // lease = 3 x 300 ms
    await system.start('api');
    const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => system.submit('echo', { i })));

    // The dying relay: claims, publishes, gets the confirms, and never marks.
    const publisher = createPublisher(testTopology(system.prefix), 5000, quietLogger);
    const connection = await connectAmqp(amqpUrl(), quietLogger, publisher.setup);
    await waitFor('publisher ready', () => publisher.ready());
    const claimed = await claimBatch(system.database.db, 100, 900);
    expect((await publisher.publishBatch(claimed)).published).toHaveLength(20);
    await connection.close();

    await system.start('worker');
    await system.waitForTerminal(ids);
    await system.start('relay');
    await waitFor('every row re-published and marked', async () => {
      const left = await system.database.db
        .selectFrom('outbox')
        .select('id')
        .where('published_at', 'is', null)
        .execute();
      return left.length === 0;
    });
    await waitFor(
      'duplicates absorbed',
      () => system.logs((l) => l.message === 'duplicate delivery absorbed').length === 20,
    );

    const tasks = await system.database.db.selectFrom('tasks').selectAll().execute();
    expect(tasks.map((t) => [t.status, t.attempts])).toEqual(Array(20).fill(['succeeded', 1]));
    const attempts = await system.database.db.selectFrom('task_attempts').selectAll().execute();
    expect(attempts).toHaveLength(20);
  });

  it('resumes a task whose worker was killed mid-handler as a new attempt, and finishes it exactly once', async () => {
    system = await startSystem({ WORKER_LEASE_MS: '1000' });
    await system.start('api');
    await system.start('relay');
    const doomed = await system.start('worker');
    const id = await system.submit('sleep', { ms: 1500 });
    await waitFor('processing', async () => (await system.status(id)) === 'processing');
    await doomed.kill();
    await system.start('worker');
    await system.waitForTerminal([id], 20_000);

    expect(await system.status(id)).toBe('succeeded');
    const attempts = await attemptsOf(id);
    expect(attempts.map((a) => a.outcome)).toEqual(['lost', 'succeeded']);
    expect(attempts[0]!.external_job_id).not.toBe(attempts[1]!.external_job_id);
    const task = await system.database.db
      .selectFrom('tasks')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
    expect(task.external_job_id).toBe(attempts[1]!.external_job_id);
  });

  it('retries with backoff through the outbox until it succeeds, or fails with the last error', async () => {
    system = await startSystem({ RETRY_BASE_MS: '50', RETRY_MAX_MS: '200' });
    await system.start('api');
    await system.start('relay');
    await system.start('worker');
    const recovers = await system.submit('flaky', { failTimes: 2 });
    const gives_up = await system.submit('flaky', { failTimes: 5 }, { maxAttempts: 3 });
    await system.waitForTerminal([recovers, gives_up], 20_000);

    expect((await attemptsOf(recovers)).map((a) => a.outcome)).toEqual(['failed', 'failed', 'succeeded']);
    expect(await system.status(recovers)).toBe('succeeded');
    const failed = await system.database.db
      .selectFrom('tasks')
      .selectAll()
      .where('id', '=', gives_up)
      .executeTakeFirstOrThrow();
    expect(failed).toMatchObject({
      status: 'failed',
      attempts: 3,
      error: { message: 'flaky failure on attempt 3 of 5' },
    });
    expect((await attemptsOf(gives_up)).map((a) => a.outcome)).toEqual(['failed', 'failed', 'failed']);
    const messages = await system.database.db
      .selectFrom('outbox')
      .selectAll()
      .where('task_id', '=', gives_up)
      .orderBy('id')
      .execute();
    expect(messages.map((m) => (m.payload as { attempt: number }).attempt)).toEqual([1, 2, 3]);
  });

  it('drains in-flight work on SIGTERM and exits 0', async () => {
    system = await startSystem({ SHUTDOWN_TIMEOUT_MS: '10000' });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const id = await system.submit('sleep', { ms: 1000 });
    await waitFor('processing', async () => (await system.status(id)) === 'processing');
    expect(await worker.stop()).toBe(0);
    expect(await system.status(id)).toBe('succeeded');
  });

  it('interrupts a run still going at the shutdown deadline, queueing its next attempt at once, not counted', async () => {
    system = await startSystem({ SHUTDOWN_TIMEOUT_MS: '1000', WORKER_LEASE_MS: '60000' });
    const api = `http://127.0.0.1:${await (await system.start('api')).port()}`;
    await system.start('relay');
    const worker = await system.start('worker');
    const id = await system.submit('sleep', { ms: 3000 }, { maxAttempts: 1 });
    await waitFor('processing', async () => (await system.status(id)) === 'processing');
    expect(await worker.stop()).toBe(0);
    expect(await system.status(id)).toBe('pending');
    expect(worker.logs.filter((l) => String(l.message).startsWith('task interrupted by the shutdown'))).toEqual([
      expect.objectContaining({ taskId: id, attempt: 1 }),
    ]);
    await system.start('worker');
    // Well before the 60 s lease would run out, and on its last attempt: the interrupted one is not counted.
    await system.waitForTerminal([id], 15_000);
    expect(await system.status(id)).toBe('succeeded');
    expect((await attemptsOf(id)).map((a) => [a.attempt, a.outcome])).toEqual([
      [1, 'lost'],
      [2, 'succeeded'],
    ]);
    // The view's timeline tells the interruption from a worker that died.
    const view = (await (await fetch(`${api}/tasks/${id}`)).json()) as { maxAttempts: number; timeline: object[] };
    expect(view.maxAttempts).toBe(2);
    expect(view.timeline).toContainEqual(
      expect.objectContaining({
        event: 'finished',
        attempt: 1,
        outcome: 'lost',
        error: expect.objectContaining({ name: 'Interrupted' }),
      }),
    );
  });

  it('runs 3 relays and 3 workers on one outbox without publishing a row twice or running a task twice', async () => {
    system = await startSystem({ RELAY_BATCH_SIZE: '20' });
    await system.start('api');
    for (let i = 0; i < 3; i++) {
      await system.start('relay');
      await system.start('worker');
    }
    const ids = await Promise.all(Array.from({ length: 600 }, (_, i) => system.submit('echo', { i })));
    await system.waitForTerminal(ids);
    const outbox = await system.database.db.selectFrom('outbox').select(['publish_attempts', 'published_at']).execute();
    expect(outbox.every((o) => o.publish_attempts === 1 && o.published_at)).toBe(true);
    const tasks = await system.database.db.selectFrom('tasks').select(['status', 'attempts']).execute();
    expect(tasks.every((t) => t.status === 'succeeded' && t.attempts === 1)).toBe(true);
    expect(system.logs((l) => l.message === 'duplicate delivery absorbed')).toEqual([]);
    const workersUsed = new Set(
      (await system.database.db.selectFrom('tasks').select('external_job_id').execute()).map(
        (t) => t.external_job_id?.split(':')[0],
      ),
    );
    expect(workersUsed.size).toBe(3);
  });

  it('holds a delivery while its Postgres is away and starts it when it is back, without requeueing it', async () => {
    system = await startSystem();
    await system.start('api');
    await system.start('relay');
    const worker = await startWorkerBehindProxy();
    await proxy!.cut();
    const id = await system.submit('echo', { held: true });
    await worker.waitForLog(
      'postgres unavailable',
      (l) => l.message === 'postgres unavailable; retrying' && l.taskId === id,
    );
    // Held, not requeued, until the worker itself reports its Postgres gone.
    const health = `http://127.0.0.1:${await worker.port()}/readyz`;
    await waitFor('the worker to report Postgres unavailable', async () => (await fetch(health)).status === 503);
    await proxy!.restore();
    await system.waitForTerminal([id], 20_000);
    expect(await system.status(id)).toBe('succeeded');
    expect(worker.logs.filter((l) => l.message === 'delivery not handled; requeueing')).toEqual([]);
    expect(await attemptsOf(id)).toHaveLength(1);
  });

  it('stops a run whose task was finished elsewhere (fencing), instead of letting it go on', async () => {
    system = await startSystem({ WORKER_LEASE_MS: '600' });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const id = await system.submit('sleep', { ms: 60_000 });
    await waitFor('processing', async () => (await system.status(id)) === 'processing');
    await system.database.db
      .updateTable('tasks')
      .set({ status: 'succeeded', finished_at: new Date() })
      .where('id', '=', id)
      .execute();
    await worker.waitForLog(
      'the run aborted',
      (l) =>
        l.message === "run stopped: its lease was lost, and the task is no longer this worker's" && l.taskId === id,
      5000,
    );
    await worker.waitForLog(
      'the requeued message absorbed',
      (l) => l.message === 'duplicate delivery absorbed' && l.taskId === id,
    );
    expect(await attemptsOf(id)).toHaveLength(1);
  });

  it('runs a task again whose start a failover lost: its finish puts the message back instead of acking it', async () => {
    system = await startSystem({ WORKER_LEASE_MS: '60000' });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    const id = await system.submit('sleep', { ms: 1500 });
    const { db } = system.database;
    await waitFor('the handler running', async () => {
      const row = await db.selectFrom('tasks').select('current_step').where('id', '=', id).executeTakeFirstOrThrow();
      return row.current_step === 'sleeping';
    });
    // What a failover to a standby without the start leaves: the task as the api wrote it, no attempt row.
    await db.transaction().execute(async (tx) => {
      await tx.deleteFrom('task_attempts').where('task_id', '=', id).execute();
      await tx
        .updateTable('tasks')
        .set({ status: 'pending', attempts: 0, external_job_id: null, lease_until: null, started_at: null })
        .where('id', '=', id)
        .execute();
    });
    await system.waitForTerminal([id], 30_000);
    expect(await system.status(id)).toBe('succeeded');
    expect((await attemptsOf(id)).map((a) => [a.attempt, a.outcome])).toEqual([[1, 'succeeded']]);
    expect(
      worker.logs.filter((l) => l.taskId === id && String(l.message).startsWith('attempt result discarded')),
    ).toHaveLength(1);
  });

  it('exits 0 on SIGTERM within its deadline even while Postgres is away, leaving the run to be resumed', async () => {
    system = await startSystem({ SHUTDOWN_TIMEOUT_MS: '3000', WORKER_LEASE_MS: '1000' });
    await system.start('api');
    await system.start('relay');
    const worker = await startWorkerBehindProxy();
    const id = await system.submit('sleep', { ms: 1000 });
    await waitFor('processing', async () => (await system.status(id)) === 'processing');
    await proxy!.cut();
    expect(await worker.stop()).toBe(0);
    await proxy!.restore();
    await system.start('worker');
    await system.waitForTerminal([id], 20_000);
    expect(await system.status(id)).toBe('succeeded');
  });

  it('aborts a run whose Postgres connection hangs before its lease can expire, so another worker resumes it only after that, and it succeeds once', async () => {
    system = await startSystem({ WORKER_LEASE_MS: '2000' });
    await system.start('api');
    await system.start('relay');
    // One delivery at a time: once A abandons the run, the requeued message comes back to A and its start
    // hangs there, so the attempt that resumes the task can only go to B.
    const a = await startWorkerBehindProxy({ WORKER_PREFETCH: '1' });
    // Long enough that A is still in the first half of its sleep, not awaiting a progress write, when fenced.
    const id = await system.submit('sleep', { ms: 10_000 });
    const task = () =>
      system.database.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    await waitFor('the handler running on A', async () => (await task()).current_step === 'sleeping');

    proxy!.blackhole();
    const abandoned = (l: LogLine) =>
      l.message === "run stopped: its lease was lost, and the task is no longer this worker's" && l.taskId === id;
    const leaseExpired = async () => {
      const { expired } = await system.database.db
        .selectFrom('tasks')
        .select(sql<boolean>`coalesce(lease_until < now(), true)`.as('expired'))
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
      return expired;
    };
    await waitFor('A to abandon its run, or its lease to expire', async () => a.logs.some(abandoned) || leaseExpired());
    const b = await system.start('worker', { LOG_LEVEL: 'debug' });
    const resumed = await b.waitForLog(
      'the task resumed',
      (l) => l.message === 'task started' && l.taskId === id && l.attempt === 2,
    );
    const abort = a.logs.find(abandoned);
    expect(abort).toBeDefined();
    expect(Date.parse(String(resumed.timestamp))).toBeGreaterThan(Date.parse(String(abort!.timestamp)));

    await system.waitForTerminal([id], 30_000);
    expect(await system.status(id)).toBe('succeeded');
    expect((await attemptsOf(id)).map((t) => t.outcome)).toEqual(['lost', 'succeeded']);
    expect(system.logs((l) => l.message === 'task succeeded' && l.taskId === id)).toHaveLength(1);
  });
});
