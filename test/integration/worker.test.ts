import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import {
  amqpNames,
  assertTopology,
  consumedQueues,
  connectAmqp,
  createDb,
  createOutboxNotifier,
  createPool,
  createTaskNotifier,
  sleep,
  type Logger,
} from '@taskbox/shared';
import { createConsumer, type Consumer } from '../../services/worker/src/consumer';
import { createLeases } from '../../services/worker/src/leases';
import { createWorkerMetrics, type WorkerMetrics } from '../../services/worker/src/metrics';
import { createOrphans } from '../../services/worker/src/orphans';
import { createSweeper } from '../../services/worker/src/sweeper';
import { createAttemptWrites, type AttemptWrites } from '../../services/worker/src/attempt-writes';
import type { AttemptOutcome } from '../../services/worker/src/finish-sql';
import { sweepExpiredLeases } from '../../services/worker/src/lease-sql';
import { amqpUrl, deleteTopology, drainQueue, testPrefix, testTopology } from '../helpers/amqp';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';
import { parseMetrics, sample } from '../helpers/metrics';
import { startFaultProxy } from '../helpers/proxy';
import { waitFor } from '../helpers/wait';

describe('worker', () => {
  let database: TestDatabase;
  let prefix: string;
  let worker: { consumer: Consumer; metrics: WorkerMetrics; close(): Promise<void> };
  let publisher: amqp.ChannelModel;
  let channel: amqp.ConfirmChannel;

  /** `wrapWrites` lets a test change what the worker asks Postgres to store. */
  async function startWorker(
    leaseMs = 15_000,
    wrapWrites = (writes: AttemptWrites) => writes,
    logger: Logger = quietLogger,
  ) {
    const leases = createLeases(database.db, leaseMs, quietLogger);
    const stopping = new AbortController();
    const metrics = createWorkerMetrics(database.db, ['tasks', 'reports']);
    const topology = testTopology(prefix);
    const consumer = createConsumer(
      { topology, queues: consumedQueues(topology, undefined, 10), graceMs: 5000, giveUp: () => stopping.abort() },
      {
        db: database.db,
        writes: wrapWrites(createAttemptWrites(database.db, leaseMs, 10)),
        leases,
        outboxNotifier: createOutboxNotifier(database.pool, quietLogger),
        taskNotifier: createTaskNotifier(database.pool, quietLogger),
        metrics,
        leaseMs,
        retry: { baseMs: 10, maxMs: 50 },
        timeoutGraceMs: 1000,
        resultMaxBytes: 1000,
        orphans: createOrphans(10, metrics, () => undefined),
        stopping: stopping.signal,
      },
      logger,
    );
    const connection = await connectAmqp(amqpUrl(), quietLogger, consumer.setup);
    leases.start();
    await waitFor('consumer ready', () => consumer.ready());
    return {
      consumer,
      metrics,
      async close() {
        await consumer.stop();
        await leases.stop();
        await connection.close();
      },
    };
  }

  /** A worker that records `swap(outcome)` for each outcome: for values no built-in handler makes. */
  function startWorkerSwapping(swap: (outcome: AttemptOutcome, attempt: number) => AttemptOutcome) {
    return startWorker(15_000, (real) => ({
      ...real,
      finish: (taskId, attempt, outcome) => real.finish(taskId, attempt, swap(outcome, attempt)),
    }));
  }

  function publish(body: unknown, properties: amqp.Options.Publish = {}, routingKey = 'echo'): Promise<void> {
    const content = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    return new Promise((resolve, reject) =>
      channel.publish(
        amqpNames(prefix).exchange,
        routingKey,
        content,
        { messageId: randomUUID(), ...properties },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  }

  const task = (id: string) =>
    database.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  const attemptsOf = (id: string) =>
    database.db.selectFrom('task_attempts').selectAll().where('task_id', '=', id).orderBy('attempt').execute();

  beforeEach(async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
    publisher = await amqp.connect(amqpUrl());
    channel = await publisher.createConfirmChannel();
    await assertTopology(channel, testTopology(prefix));
    worker = await startWorker();
  });

  afterEach(async () => {
    await worker.close();
    await publisher.close();
    await database.drop();
    await deleteTopology(prefix);
  });

  it('marks the task processing with <consumer tag>:<delivery tag>, records the result, then acks', async () => {
    const id = await insertTaskFixture(database.db, { type: 'echo', payload: { hello: 'world' } });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    const done = await waitFor('succeeded', async () => ((await task(id)).status === 'succeeded' ? task(id) : null));
    expect(done).toMatchObject({ attempts: 1, result: { hello: 'world' }, error: null, progress: 1 });
    expect(done.external_job_id).toMatch(/^worker-.+-\d+-[0-9a-f]{8}:1$/);
    expect(done.started_at).not.toBeNull();
    expect(done.finished_at).not.toBeNull();
    const attempts = await attemptsOf(id);
    expect(attempts).toMatchObject([{ attempt: 1, outcome: 'succeeded', external_job_id: done.external_job_id }]);

    await worker.close();
    worker = await startWorker();
    const { messageCount } = await channel.checkQueue(amqpNames(prefix).queue);
    expect(messageCount).toBe(0); // acked: nothing came back when the consumer went away
  });

  it('never runs a finished task again when its message is delivered twice', async () => {
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded');
    const first = await task(id);
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await publish({ taskId: id, type: 'echo', attempt: 2 });
    const marker = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: marker, type: 'echo', attempt: 1 });
    await waitFor('the later message processed', async () => (await task(marker)).status === 'succeeded');
    expect(await task(id)).toMatchObject({ attempts: 1, external_job_id: first.external_job_id });
    expect(await attemptsOf(id)).toHaveLength(1);
  });

  it('does not run a duplicate while the first run is alive', async () => {
    const id = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 800 } });
    await publish({ taskId: id, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('processing', async () => (await task(id)).status === 'processing');
    await publish({ taskId: id, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded');
    expect(await attemptsOf(id)).toHaveLength(1);
    expect((await task(id)).attempts).toBe(1);
  });

  it('resumes a run whose worker died (lease expired) as a new attempt with a new external job id', async () => {
    const id = await insertTaskFixture(database.db, { status: 'processing', attempts: 1, leaseExpired: true });
    await database.db
      .insertInto('task_attempts')
      .values({ task_id: id, attempt: 1, external_job_id: 'worker-dead-1-00000000:7' })
      .execute();
    await publish({ taskId: id, type: 'echo', attempt: 1 }, { headers: {} });
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded');
    const attempts = await attemptsOf(id);
    expect(attempts.map((a) => [a.attempt, a.outcome])).toEqual([
      [1, 'lost'],
      [2, 'succeeded'],
    ]);
    expect((await task(id)).external_job_id).toBe(attempts[1]!.external_job_id);
    expect(attempts[1]!.external_job_id).not.toBe('worker-dead-1-00000000:7');
    const samples = parseMetrics(await worker.metrics.registry.metrics());
    expect(sample(samples, 'worker_attempt_failures_total', { final: 'false' })).toBe(1);
  });

  it('fails a dead run on its last attempt when its redelivery finds it, counted as a final failure', async () => {
    const id = await insertTaskFixture(database.db, {
      status: 'processing',
      attempts: 2,
      maxAttempts: 2,
      leaseExpired: true,
    });
    await publish({ taskId: id, type: 'echo', attempt: 2 });
    await waitFor('failed', async () => (await task(id)).status === 'failed');
    expect((await task(id)).error).toMatchObject({ message: 'the last attempt stopped without finishing' });
    const samples = parseMetrics(await worker.metrics.registry.metrics());
    expect(sample(samples, 'worker_attempt_failures_total', { final: 'true' })).toBe(1);
    expect(sample(samples, 'worker_attempt_failures_total', { final: 'false' })).toBe(0);
  });

  it('sweeps a dead run back to pending with an outbox row for the next attempt, or fails it when none is left', async () => {
    const resumable = await insertTaskFixture(database.db, { status: 'processing', attempts: 1, leaseExpired: true });
    const exhausted = await insertTaskFixture(database.db, {
      status: 'processing',
      attempts: 3,
      maxAttempts: 3,
      leaseExpired: true,
    });
    const live = await insertTaskFixture(database.db, { status: 'processing', attempts: 1 });
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    await database.db.updateTable('tasks').set({ traceparent }).where('id', '=', resumable).execute();
    const { logger, lines } = capturingLogger();
    const metrics = createWorkerMetrics(database.db, ['tasks']);
    const sweeper = createSweeper(
      database.db,
      20,
      {
        outboxNotifier: createOutboxNotifier(database.pool, quietLogger),
        taskNotifier: createTaskNotifier(database.pool, quietLogger),
        metrics,
      },
      logger,
    );
    await sweeper.start();
    await waitFor('both runs swept', () => lines.length >= 2);
    await sweeper.stop();
    expect(await task(resumable)).toMatchObject({ status: 'pending', attempts: 1 });
    expect(await task(exhausted)).toMatchObject({ status: 'failed', error: { name: 'LostRun' } });
    expect(await task(live)).toMatchObject({ status: 'processing' });
    const outbox = await database.db.selectFrom('outbox').selectAll().execute();
    expect(outbox.map((o) => [o.task_id, o.payload, o.headers])).toEqual([
      [resumable, { taskId: resumable, type: 'echo', attempt: 2 }, { correlationId: `corr-${resumable}`, traceparent }],
    ]);
    // A line for each task, with its ids: the worker that ran it is gone, so no other line tells its fate.
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          level: 'warn',
          message: 'run lost: its worker stopped renewing the lease; the next attempt is queued',
          taskId: resumable,
          correlationId: `corr-${resumable}`,
          messageId: outbox[0]!.message_id,
          attempt: 1,
        }),
        expect.objectContaining({
          level: 'error',
          message: 'task failed: its run was lost (its worker stopped renewing the lease) and no attempts are left',
          taskId: exhausted,
          correlationId: `corr-${exhausted}`,
          attempt: 3,
        }),
      ]),
    );
    const samples = parseMetrics(await metrics.registry.metrics());
    expect(sample(samples, 'worker_attempt_failures_total', { final: 'true' })).toBe(1);
    expect(sample(samples, 'worker_attempt_failures_total', { final: 'false' })).toBe(1);
  });

  it('says once that its sweeps fail while Postgres is away, and once that they work again', async () => {
    const proxy = await startFaultProxy('127.0.0.1', Number(new URL(database.url).port || 5432));
    const pool = createPool(proxy.url(database.url), quietLogger, { max: 1, statementTimeoutMs: 2000 });
    const { logger, lines } = capturingLogger();
    const sweeper = createSweeper(
      createDb(pool),
      20,
      {
        outboxNotifier: createOutboxNotifier(database.pool, quietLogger),
        taskNotifier: createTaskNotifier(database.pool, quietLogger),
        metrics: createWorkerMetrics(database.db, ['tasks']),
      },
      logger,
    );
    const said = (message: string) => lines.filter((l) => l.message === message).length;
    try {
      await proxy.cut();
      await sweeper.start();
      await waitFor('a failed sweep', () => said('lease sweep failed; will try again') === 1);
      const failedBefore = lines.length;
      await sleep(200); // ten more sweeps fail meanwhile
      expect(lines.length).toBe(failedBefore);
      await proxy.restore();
      await waitFor('a sweep that works', () => said('lease sweep works again') === 1);
    } finally {
      await sweeper.stop();
      await pool.end();
      await proxy.close();
    }
  });

  it.each([
    ['a body that is not JSON', 'not json{', /^unparseable/],
    ['a body of the wrong shape', { task: 'x' }, /^invalid/],
    ['an unknown task id', { taskId: randomUUID(), type: 'echo', attempt: 1 }, /^unknown-task$/],
  ])('dead-letters %s with a reason header and keeps consuming', async (_name, body, reason) => {
    await publish(body);
    const [dead] = await drainQueue(amqpNames(prefix).deadQueue, 1, 5000);
    expect(String(dead?.properties.headers?.['x-dead-letter-reason'])).toMatch(reason);
    // Counted as a delivery too, whatever was wrong with it.
    const samples = parseMetrics(await worker.metrics.registry.metrics());
    expect(sample(samples, 'worker_deliveries_total', { outcome: 'dead-letter', queue: 'tasks' })).toBe(1);
    const id = await insertTaskFixture(database.db);
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('the next task still runs', async () => (await task(id)).status === 'succeeded');
  });

  it('declares its dead-letter queue again when it was deleted, rather than lose the dead letter', async () => {
    await channel.deleteQueue(amqpNames(prefix).deadQueue);
    await publish('not json');
    const [dead] = await drainQueue(amqpNames(prefix).deadQueue, 1, 5000);
    expect(String(dead?.properties.headers?.['x-dead-letter-reason'])).toMatch(/^unparseable/);
  });

  it('logs what a dead-lettered message says of itself cut short: a header of any size is not copied into the log', async () => {
    await worker.close();
    const { logger, lines } = capturingLogger();
    worker = await startWorker(15_000, undefined, logger);
    await publish('not json{', { messageId: 'm'.repeat(255), headers: { 'x-task-id': 't'.repeat(30_000) } });
    await drainQueue(amqpNames(prefix).deadQueue, 1, 5000);
    const line = await waitFor('the dead-letter line', () => lines.find((l) => l.message === 'message dead-lettered'));
    expect(line).toMatchObject({ taskId: 't'.repeat(200), messageId: 'm'.repeat(200) });
    expect(JSON.stringify(line).length).toBeLessThan(2000);
  });

  it('fails a task of an unknown type in Postgres and dead-letters its message', async () => {
    const id = await insertTaskFixture(database.db, { type: 'nope' });
    // Bound as a newer relay or worker that knows the type would bind it.
    await channel.bindQueue(amqpNames(prefix).queue, amqpNames(prefix).exchange, 'nope');
    await publish({ taskId: id, type: 'nope', attempt: 1 }, {}, 'nope');
    const [dead] = await drainQueue(amqpNames(prefix).deadQueue, 1, 5000);
    expect(dead?.properties.headers?.['x-dead-letter-reason']).toBe('unknown-type');
    expect(await task(id)).toMatchObject({ status: 'failed', error: { message: 'no handler for task type "nope"' } });
  });

  it('dead-letters with its error a message whose handling keeps failing unexpectedly, after five deliveries', async () => {
    await worker.close();
    worker = await startWorker(15_000, (real) => ({
      ...real,
      startPending: () => Promise.reject(new Error('the start is broken')),
    }));
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    const [dead] = await drainQueue(amqpNames(prefix).deadQueue, 1, 15_000);
    expect(dead?.properties.headers?.['x-dead-letter-reason']).toBe('unhandled: the start is broken');
    expect(dead?.properties.headers?.['x-delivery-count']).toBe(4);
    expect(await task(id)).toMatchObject({ status: 'pending', attempts: 0 });
  });

  it('dead-letters a message whose attempt is past what the attempts column holds, at once', async () => {
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 3_000_000_000 });
    const [dead] = await drainQueue(amqpNames(prefix).deadQueue, 1, 5000);
    expect(dead?.properties.headers?.['x-dead-letter-reason']).toMatch(/^invalid: attempt /);
    expect(dead?.properties.headers?.['x-delivery-count']).toBeUndefined();
  });

  it('fails at once, without retries, a task whose payload no longer fits its schema', async () => {
    const id = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 'soon' } });
    await publish({ taskId: id, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('failed', async () => (await task(id)).status === 'failed');
    expect((await task(id)).error).toMatchObject({ name: 'PermanentError' });
    expect(await database.db.selectFrom('outbox').selectAll().execute()).toEqual([]);
  });

  it('records a failure whose message Postgres cannot store, with the text replaced, on a retry and on a last attempt', async () => {
    await worker.close();
    // No built-in handler throws such a message, so each failure is swapped for one with a NUL and a lone surrogate.
    worker = await startWorkerSwapping((outcome, attempt) =>
      outcome.kind === 'failed' ? { ...outcome, error: new Error(`jam\u0000 at \ud800 ${attempt}`) } : outcome,
    );
    // The retry's transaction (no relay runs here: the retry waits in the outbox), then a last attempt's batch.
    const retried = await insertTaskFixture(database.db, { type: 'flaky', payload: { failTimes: 5 }, maxAttempts: 2 });
    const failed = await insertTaskFixture(database.db, { type: 'flaky', payload: { failTimes: 5 }, maxAttempts: 1 });
    await publish({ taskId: retried, type: 'flaky', attempt: 1 }, {}, 'flaky');
    await publish({ taskId: failed, type: 'flaky', attempt: 1 }, {}, 'flaky');
    await waitFor('failed', async () => (await task(failed)).status === 'failed');
    await waitFor('back to pending', async () => (await task(retried)).status === 'pending');
    const stored = { name: 'Error', message: 'jam\ufffd at \ufffd 1' };
    for (const id of [retried, failed]) {
      expect((await task(id)).error).toEqual(stored);
      expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed', error: stored }]);
    }
  });

  it('records a failure whose message throws when read, with backoff, rather than losing the attempt', async () => {
    await worker.close();
    const unreadable = () =>
      Object.defineProperty(new Error('x'), 'message', {
        get() {
          throw new Error('getter boom');
        },
      });
    worker = await startWorkerSwapping((outcome) =>
      outcome.kind === 'failed' ? { ...outcome, error: unreadable() } : outcome,
    );
    const id = await insertTaskFixture(database.db, { type: 'flaky', payload: { failTimes: 5 }, maxAttempts: 2 });
    await publish({ taskId: id, type: 'flaky', attempt: 1 }, {}, 'flaky');
    await waitFor('back to pending, its retry scheduled', async () => {
      const { status, attempts } = await task(id);
      return status === 'pending' && attempts === 1;
    });
    const stored = { name: 'Error', message: 'an error whose message throws when read' };
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed', error: stored }]);
    expect(await database.db.selectFrom('outbox').select('payload').execute()).toEqual([
      { payload: { taskId: id, type: 'flaky', attempt: 2 } },
    ]);
  });

  it('fails a task, without retries, when its result is larger than WORKER_RESULT_MAX_BYTES (1000 here)', async () => {
    const id = await insertTaskFixture(database.db, { type: 'echo', payload: { text: 'x'.repeat(2000) } });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('failed', async () => (await task(id)).status === 'failed');
    expect(await task(id)).toMatchObject({
      attempts: 1,
      result: null,
      error: { name: 'PermanentError', message: expect.stringMatching(/^the result is 2011 bytes of JSON, over/) },
    });
  });

  it('fails a task, without retries, when Postgres refuses to store its result', async () => {
    await worker.close();
    // No built-in handler returns a value jsonb refuses, so the result is swapped for one with a NUL.
    worker = await startWorkerSwapping((outcome) =>
      outcome.kind === 'succeeded' ? { ...outcome, resultJson: JSON.stringify({ text: '\u0000' }) } : outcome,
    );
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('failed', async () => (await task(id)).status === 'failed');
    expect((await task(id)).error).toMatchObject({
      name: 'PermanentError',
      message: expect.stringMatching(/^the result could not be stored: /),
    });
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed' }]);
    expect(await database.db.selectFrom('outbox').selectAll().execute()).toEqual([]);
  });

  it('stores a handler error of megabytes cut to its first 8 192 characters, saying so, on the task and its attempt', async () => {
    await worker.close();
    // No built-in handler throws so much, so the outcome is swapped.
    const huge = new Error('e'.repeat(20_000_000));
    worker = await startWorkerSwapping(() => ({ kind: 'failed', error: huge, retryInMs: null }));
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('failed', async () => (await task(id)).status === 'failed');
    const cut = { name: 'Error', message: `${'e'.repeat(8192)}… [cut: 20000000 characters in all]` };
    expect(await task(id)).toMatchObject({ attempts: 1, error: cut });
    expect((await attemptsOf(id)).map((a) => a.error)).toEqual([cut]);
  });

  it('does not run the handler of a start whose answer came back after another worker could own the task', async () => {
    await worker.close();
    const leaseMs = 1000;
    // The start commits at once, but its answer takes a whole lease to arrive (a stalled network).
    worker = await startWorker(leaseMs, (real) => ({
      ...real,
      startPending: async (start) => {
        const started = await real.startPending(start);
        await sleep(leaseMs);
        return started;
      },
    }));
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded');
    expect(await attemptsOf(id)).toMatchObject([
      { attempt: 1, outcome: 'lost' },
      { attempt: 2, outcome: 'succeeded' },
    ]);
  });

  it("runs a start whose answer was lost (the connection cut after its commit), as this delivery's own, once", async () => {
    await worker.close();
    let cut = 0;
    worker = await startWorker(15_000, (real) => ({
      ...real,
      startPending: async (start) => {
        const started = await real.startPending(start);
        if (cut++ === 0) throw Object.assign(new Error('Connection terminated unexpectedly'), { code: 'ECONNRESET' });
        return started;
      },
    }));
    const id = await insertTaskFixture(database.db, { type: 'echo', maxAttempts: 1 });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded', 5000);
    expect(await task(id)).toMatchObject({ attempts: 1 });
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'succeeded' }]);
  });

  it('takes a finish whose answer was lost, and which finds its own outcome when tried again, as recorded', async () => {
    await worker.close();
    let cut = 0;
    const { logger, lines } = capturingLogger();
    worker = await startWorker(
      15_000,
      (real) => ({
        ...real,
        finish: async (...args) => {
          const status = await real.finish(...args);
          if (cut++ === 0) throw Object.assign(new Error('Connection terminated unexpectedly'), { code: 'ECONNRESET' });
          return status;
        },
      }),
      logger,
    );
    const id = await insertTaskFixture(database.db, { type: 'echo', maxAttempts: 1 });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('recorded', () => lines.some((l) => String(l.message).startsWith('attempt recorded')), 5000);
    expect(lines.find((l) => String(l.message).startsWith('attempt recorded'))).toMatchObject({ outcome: 'succeeded' });
    // Not taken for another run's: the message was acked, not put back to be dropped on its redelivery.
    expect(lines.filter((l) => /discarded|redelivery|duplicate/.test(String(l.message)))).toEqual([]);
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'succeeded' }]);
  });

  it('schedules a retry through the outbox, with backoff, in the transaction that records the failure', async () => {
    const id = await insertTaskFixture(database.db, { type: 'flaky', payload: { failTimes: 1 } });
    await publish({ taskId: id, type: 'flaky', attempt: 1 }, {}, 'flaky');
    await waitFor(
      'back to pending',
      async () => (await task(id)).status === 'pending' && (await task(id)).attempts === 1,
    );
    const [row] = await database.db.selectFrom('outbox').selectAll().execute();
    expect(row?.payload).toEqual({ taskId: id, type: 'flaky', attempt: 2 });
    expect(row!.available_at.getTime()).toBeGreaterThanOrEqual(row!.created_at.getTime());
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed', error: { message: /attempt 1/ } }]);
  });

  it('cancels a running handler through its AbortSignal when cancellation is requested', async () => {
    const id = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 60_000 } });
    await worker.close();
    worker = await startWorker(1200); // heartbeat every 200 ms
    await publish({ taskId: id, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('processing', async () => (await task(id)).status === 'processing');
    await database.db.updateTable('tasks').set({ cancel_requested_at: new Date() }).where('id', '=', id).execute();
    await waitFor('cancelled', async () => (await task(id)).status === 'cancelled', 5000);
    expect(await attemptsOf(id)).toMatchObject([{ outcome: 'cancelled' }]);
  });

  it('at shutdown queues the next attempt of a run that stopped, not counting it, and keeps the lease of a run still going', async () => {
    // Its last attempt: a deploy must not fail it.
    const stopped = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 6000 }, maxAttempts: 1 });
    const going = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 8000, ignoreSignal: true } });
    for (const id of [stopped, going]) await publish({ taskId: id, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('both processing', async () =>
      (await Promise.all([task(stopped), task(going)])).every((t) => t.status === 'processing'),
    );
    await worker.close();
    expect(await task(stopped)).toMatchObject({
      status: 'pending',
      attempts: 1,
      max_attempts: 2,
      interrupted: 1,
      lease_until: null,
    });
    expect(await attemptsOf(stopped)).toMatchObject([{ attempt: 1, outcome: 'lost', error: { name: 'Interrupted' } }]);
    const queued = await database.db.selectFrom('outbox').select('payload').where('task_id', '=', stopped).execute();
    expect(queued).toEqual([{ payload: { taskId: stopped, type: 'sleep', attempt: 2 } }]);
    expect(((await task(going)).lease_until?.getTime() ?? 0) > Date.now()).toBe(true);

    // No relay runs here: the queued message is published by hand, as the relay would.
    worker = await startWorker();
    await publish({ taskId: stopped, type: 'sleep', attempt: 2 }, {}, 'sleep');
    await waitFor('the next attempt run to the end', async () => (await task(stopped)).status === 'succeeded', 15_000);
    expect(await attemptsOf(stopped)).toMatchObject([
      { attempt: 1, outcome: 'lost' },
      { attempt: 2, outcome: 'succeeded' },
    ]);
  });

  it.each([
    ['with attempts left, not retried', 3],
    ['on its last attempt, not failed', 1],
  ])('ends a task cancelled %s, when its attempt fails after a cancel was requested', async (_name, maxAttempts) => {
    const id = await insertTaskFixture(database.db, { type: 'flaky', payload: { failTimes: 1 }, maxAttempts });
    await database.db.updateTable('tasks').set({ cancel_requested_at: new Date() }).where('id', '=', id).execute();
    await publish({ taskId: id, type: 'flaky', attempt: 1 }, {}, 'flaky');
    await waitFor('cancelled', async () => (await task(id)).status === 'cancelled');
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'failed' }]);
    expect(await database.db.selectFrom('outbox').selectAll().execute()).toEqual([]);
  });

  it('ends a dead run cancelled when its redelivery finds a cancel requested, and never runs it again', async () => {
    // Its worker stopped (no sweeper runs here): the lease ran out with attempt 1 open.
    const id = await insertTaskFixture(database.db, {
      type: 'echo',
      status: 'processing',
      attempts: 1,
      leaseExpired: true,
    });
    await database.db
      .insertInto('task_attempts')
      .values({ task_id: id, attempt: 1, external_job_id: 'dead:1' })
      .execute();
    await database.db.updateTable('tasks').set({ cancel_requested_at: new Date() }).where('id', '=', id).execute();
    await publish({ taskId: id, type: 'echo', attempt: 1 }, {}, 'echo');
    await waitFor('cancelled', async () => (await task(id)).status === 'cancelled');
    expect((await task(id)).finished_at).not.toBeNull();
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'lost' }]);
    expect(await database.db.selectFrom('outbox').selectAll().execute()).toEqual([]);
  });

  it('keeps renewing the lease while its outcome cannot be written, so the sweeper never resumes a finished run', async () => {
    await worker.close();
    // The finish fails as over a dropped connection for 3 s, past the lease of 1.2 s.
    const failUntil = Date.now() + 3000;
    worker = await startWorker(1200, (real) => ({
      ...real,
      finish: (taskId, attempt, outcome) =>
        Date.now() < failUntil
          ? Promise.reject(Object.assign(new Error('connection reset'), { code: 'ECONNRESET' }))
          : real.finish(taskId, attempt, outcome),
    }));
    const id = await insertTaskFixture(database.db, { type: 'echo' });
    await publish({ taskId: id, type: 'echo', attempt: 1 });
    await waitFor('running', async () => (await task(id)).status === 'processing');
    const swept: unknown[] = [];
    while (Date.now() < failUntil) {
      swept.push(...(await sweepExpiredLeases(database.db, 100)));
      await sleep(100);
    }
    await waitFor('succeeded', async () => (await task(id)).status === 'succeeded');
    expect(swept).toEqual([]);
    expect(await attemptsOf(id)).toMatchObject([{ attempt: 1, outcome: 'succeeded' }]);
  });

  it('keeps renewing the leases of live runs while a finished run waits on its row lock', async () => {
    await worker.close();
    const slow = await insertTaskFixture(database.db, { type: 'sleep', payload: { ms: 2500 } });
    const quick = await insertTaskFixture(database.db, { type: 'echo' });
    let released = Promise.resolve();
    // The quick task's finish waits 3 s on a lock of its row held elsewhere (as a write whose connection
    // died holds it), past the slow run's fence of 0.6 s, the lease being 1.2 s.
    worker = await startWorker(1200, (real) => ({
      ...real,
      finish: async (taskId, attempt, outcome) => {
        if (taskId === quick) {
          const held = database.db.transaction().execute(async (tx) => {
            await tx.selectFrom('tasks').select('id').where('id', '=', quick).forUpdate().execute();
            await sleep(3000);
          });
          released = held;
          await sleep(100);
        }
        return real.finish(taskId, attempt, outcome);
      },
    }));
    await publish({ taskId: slow, type: 'sleep', attempt: 1 }, {}, 'sleep');
    await waitFor('the slow run started', async () => (await task(slow)).status === 'processing');
    await publish({ taskId: quick, type: 'echo', attempt: 1 });
    await waitFor(
      'both succeeded',
      async () => {
        const statuses = await Promise.all([task(slow), task(quick)].map(async (t) => (await t).status));
        return statuses.every((s) => s === 'succeeded');
      },
      15_000,
    );
    await released;
    expect(await attemptsOf(slow)).toMatchObject([{ attempt: 1, outcome: 'succeeded' }]);
    expect(await attemptsOf(quick)).toMatchObject([{ attempt: 1, outcome: 'succeeded' }]);
  });

  it('ends a dead run cancelled, not resumed, when a cancel was requested', async () => {
    const id = await insertTaskFixture(database.db, { status: 'processing', attempts: 1, leaseExpired: true });
    await database.db.updateTable('tasks').set({ cancel_requested_at: new Date() }).where('id', '=', id).execute();
    expect(await sweepExpiredLeases(database.db, 100)).toEqual([
      { id, status: 'cancelled', attempt: 1, correlationId: `corr-${id}`, messageId: undefined },
    ]);
    expect(await task(id)).toMatchObject({ status: 'cancelled' });
    expect((await task(id)).finished_at).not.toBeNull();
    expect(await database.db.selectFrom('outbox').selectAll().execute()).toEqual([]);
  });
});
