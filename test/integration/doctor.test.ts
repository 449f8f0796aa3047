import amqp from 'amqplib';
import { sql } from 'kysely';
import { amqpNames, checkNames as c, sleep } from '@taskbox/shared';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { closedPort, runDoctor, statuses } from '../helpers/doctor';
import { startService, type RunningService, type ServiceName } from '../helpers/services';
import { waitFor } from '../helpers/wait';

const PENDING_MS = 500;

describe('npm run doctor says where the chain is broken', () => {
  let database: TestDatabase;
  let prefix: string;
  let env: Record<string, string>;
  let api: string;
  const running = new Map<ServiceName, RunningService>();

  async function start(name: ServiceName, extra: Record<string, string> = {}): Promise<void> {
    const service = startService(name, { ...env, ...extra });
    running.set(name, service);
    if (name === 'worker') await service.waitForLog('consuming', (l) => l.message === 'consuming');
    else await service.port();
  }

  async function stop(name: ServiceName): Promise<void> {
    expect(await running.get(name)?.stop()).toBe(0);
    running.delete(name);
  }

  const doctor = (extra: Record<string, string> = {}) =>
    runDoctor({ ...env, DOCTOR_PENDING_MS: String(PENDING_MS), DOCTOR_PROCESSING_MS: '500', ...extra });

  async function submit(type: string, payload: unknown): Promise<string> {
    const res = await fetch(`${api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type, payload }),
    });
    expect(res.status).toBe(202);
    return ((await res.json()) as { id: string }).id;
  }

  /** Waits until the task's outbox row has been in `state` for longer than the doctor's threshold. */
  function outboxOlderThanThreshold(taskId: string, state: 'published' | 'unpublished') {
    const column = state === 'published' ? sql`published_at` : sql`created_at`;
    const filter = state === 'published' ? sql`published_at IS NOT NULL` : sql`published_at IS NULL`;
    return waitFor(`task ${taskId}'s outbox row to be ${state} for a while`, async () => {
      const { rows } = await sql`
        SELECT 1 FROM outbox WHERE task_id = ${taskId} AND ${filter}
          AND ${column} < now() - ${PENDING_MS + 100} * interval '1 millisecond'`.execute(database.db);
      return rows.length > 0;
    });
  }

  const taskStatus = async (id: string) =>
    (await database.db.selectFrom('tasks').select('status').where('id', '=', id).executeTakeFirst())?.status;

  beforeAll(async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
    env = { DATABASE_URL: database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix };
    await Promise.all([start('api'), start('relay'), start('worker')]);
    api = `http://127.0.0.1:${await running.get('api')!.port()}`;
  });

  afterAll(async () => {
    await Promise.all([...running.values()].map((s) => s.stop()));
    await database.drop();
    await deleteTopology(prefix);
  });

  it('reports every check ok and exits 0 while api, relay and worker run', async () => {
    const id = await submit('echo', { hello: 'doctor' });
    await waitFor('the task to succeed', async () => (await taskStatus(id)) === 'succeeded');
    const run = await doctor();
    expect(statuses(run)).toEqual(Object.fromEntries(Object.values(c).map((n) => [n, 'ok'])));
    expect(run.code).toBe(0);
  });

  it('with the worker stopped, fails "consumers on the queues" and names the task pending after publishing', async () => {
    await stop('worker');
    const id = await submit('echo', { stuck: 'worker' });
    await outboxOlderThanThreshold(id, 'published');
    const run = await doctor();
    expect(run.status(c.consumers)).toBe('fail');
    expect(run.line(c.consumers)).toMatch(/0 on .*tasks, 1 messages ready/);
    expect(run.status(c.pendingPublished)).toBe('fail');
    expect(run.line(c.pendingPublished)).toContain(id);
    expect(run.status(c.pendingUnpublished)).toBe('ok');
    expect(run.code).toBe(1);

    await start('worker');
    await waitFor('the stuck task to succeed', async () => (await taskStatus(id)) === 'succeeded');
    expect((await doctor()).code).toBe(0);
  });

  it('with the relay stopped, fails "pending, not published" and warns about the outbox backlog', async () => {
    await stop('relay');
    const id = await submit('echo', { stuck: 'relay' });
    await outboxOlderThanThreshold(id, 'unpublished');
    const run = await doctor();
    expect(run.status(c.pendingUnpublished)).toBe('fail');
    expect(run.line(c.pendingUnpublished)).toContain(id);
    expect(run.status(c.backlog)).toBe('warn');
    expect(run.status(c.pendingPublished)).toBe('ok');
    expect(run.status(c.consumers)).toBe('ok');
    expect(run.code).toBe(1);

    await start('relay');
    await waitFor('the stuck task to succeed', async () => (await taskStatus(id)) === 'succeeded');
  });

  it('warns about a task processing longer than the threshold, without failing', async () => {
    // Long enough to be still running whatever the doctor's run takes; cancelled after.
    const id = await submit('sleep', { ms: 60_000 });
    await waitFor('the sleep to be running past the threshold', async () => {
      const { rows } = await sql`
        SELECT 1 FROM task_attempts WHERE task_id = ${id} AND finished_at IS NULL
          AND started_at < now() - interval '600 milliseconds'`.execute(database.db);
      return rows.length > 0;
    });
    const run = await doctor();
    expect(run.status(c.processing)).toBe('warn');
    expect(run.line(c.processing)).toContain(id);
    expect(run.code).toBe(0);
    expect((await fetch(`${api}/tasks/${id}/cancel`, { method: 'POST' })).status).toBe(202);
    await waitFor('the sleep to stop', async () => (await taskStatus(id)) === 'cancelled');
  });

  it('warns about a transaction open for long, and fails while a session waits on its locks, naming its pid', async () => {
    const holder = await database.pool.connect();
    const waiter = await database.pool.connect();
    let waiting: Promise<unknown> | undefined;
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE task_retries IN ACCESS EXCLUSIVE MODE');
      const pid = (await holder.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      await sleep(PENDING_MS + 100);
      const open = await doctor();
      expect(open.status(c.longTransactions)).toBe('warn');
      expect(open.line(c.longTransactions)).toMatch(new RegExp(`1 open over 1s, oldest \\d+s \\(pid ${pid}, `));

      waiting = waiter.query('SELECT count(*) FROM task_retries');
      await waitFor('a session waiting on the lock', async () => {
        const { rows } = await sql`SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'
          AND datname = current_database()`.execute(database.db);
        return rows.length > 0;
      });
      const locking = await doctor();
      expect(locking.status(c.longTransactions)).toBe('fail');
      expect(locking.line(c.longTransactions)).toMatch(/1 sessions wait on their locks/);
      expect(locking.code).toBe(1);
    } finally {
      await holder.query('COMMIT');
      await waiting;
      holder.release();
      waiter.release();
    }
    expect((await doctor()).status(c.longTransactions)).toBe('ok');
  });

  it('warns when the relay republished stranded tasks in the last day, naming the latest', async () => {
    const id = await submit('echo', { republished: true });
    await waitFor('the task to succeed', async () => (await taskStatus(id)) === 'succeeded');
    await sql`UPDATE tasks SET republished_at = now() - interval '2 minutes' WHERE id = ${id}`.execute(database.db);
    const run = await doctor();
    expect(run.status(c.republished)).toBe('warn');
    expect(run.line(c.republished)).toMatch(new RegExp(`1 in the last 24h, latest 2m ago \\(task ${id}\\)`));
    expect(run.code).toBe(0);
    await sql`UPDATE tasks SET republished_at = NULL WHERE id = ${id}`.execute(database.db);
  });

  it('warns about dead letters waiting', async () => {
    const connection = await amqp.connect(amqpUrl());
    try {
      const ch = await connection.createConfirmChannel();
      ch.publish(amqpNames(prefix).exchange, 'echo', Buffer.from('not json'), { messageId: 'garbage-1' });
      await ch.waitForConfirms();
      await waitFor('the garbage to be dead-lettered', async () => {
        return (await ch.checkQueue(amqpNames(prefix).deadQueue)).messageCount === 1;
      });
      await ch.close();
    } finally {
      await connection.close();
    }
    const run = await doctor();
    expect(run.status(c.deadLetters)).toBe('warn');
    expect(run.line(c.deadLetters)).toContain('1 waiting');
  });

  it('fails "topology declared" naming a queue declared with other arguments, which the worker logs it cannot declare beside', async () => {
    const other = testPrefix();
    const connection = await amqp.connect(amqpUrl());
    const worker = startService('worker', { ...env, AMQP_PREFIX: other });
    try {
      const ch = await connection.createChannel();
      // Someone else's classic queue where the topology has a quorum queue.
      await ch.assertQueue(amqpNames(other, 'reports').queue, { durable: true });
      const refused = 'rabbitmq refuses the topology; retrying (npm run doctor names what differs)';
      expect(await worker.waitForLog(refused, (l) => l.message === refused)).toMatchObject({
        level: 'error',
        error: expect.stringContaining('PRECONDITION_FAILED'),
      });
      const run = await doctor({ AMQP_PREFIX: other });
      expect(run.status(c.topology)).toBe('fail');
      expect(run.line(c.topology)).toMatch(
        new RegExp(
          `declared with other arguments: ${amqpNames(other, 'reports').queue} \\(inequivalent arg '[\\w-]+' for queue [^"]+\\)  →`,
        ),
      );
      expect(run.code).toBe(1);
    } finally {
      await worker.stop();
      await connection.close();
      await deleteTopology(other);
    }
  });

  it('with no worker on the reports queue, fails "consumers on the queues" and names the report type', async () => {
    await stop('worker');
    await start('worker', { WORKER_QUEUES: 'default:5' });
    const id = await submit('report', { title: 'unconsumed', sections: ['a'], msPerSection: 0 });
    await outboxOlderThanThreshold(id, 'published');
    const run = await doctor();
    expect(run.status(c.consumers)).toBe('fail');
    expect(run.line(c.consumers)).toMatch(/1 on .*tasks, 0 messages ready; 0 on .*reports, 1 messages ready/);
    expect(run.line(c.consumers)).toContain('no running worker handles types report (queue reports)');
    expect(run.code).toBe(1);

    await stop('worker');
    await start('worker');
    await waitFor('the report to succeed', async () => (await taskStatus(id)) === 'succeeded');
    expect(run.status(c.noHandler)).toBe('ok');
  });

  it('fails "tasks no worker could run" naming the type a worker had no handler for', async () => {
    const id = await insertTaskFixture(database.db, { type: 'pdf', status: 'failed' });
    await sql`UPDATE tasks SET finished_at = now(), error = ${JSON.stringify({ name: 'Error', message: 'no handler for task type "pdf"' })}::jsonb
      WHERE id = ${id}`.execute(database.db);
    const run = await doctor();
    expect(run.status(c.noHandler)).toBe('fail');
    expect(run.line(c.noHandler)).toContain(`1 of type pdf (task ${id}) failed in the last 24h`);
    expect(run.code).toBe(1);
    await database.db.deleteFrom('tasks').where('id', '=', id).execute();
    expect((await doctor()).status(c.noHandler)).toBe('ok');
  });

  it('fails "publishes of unknown types" for a type no queue is bound to, counting from its creation', async () => {
    // An api that knows `pdf` deployed before any relay or worker that binds it.
    const id = await insertTaskFixture(database.db, { type: 'pdf', withOutbox: true });
    await sql`UPDATE outbox SET created_at = now() - interval '3 minutes' WHERE task_id = ${id}`.execute(database.db);
    await waitFor('the unroutable publish recorded', async () => {
      const row = await database.db
        .selectFrom('outbox')
        .select('last_error')
        .where('task_id', '=', id)
        .executeTakeFirst();
      return row?.last_error?.includes('unroutable') === true;
    });
    const run = await doctor();
    expect(run.status(c.unroutable)).toBe('fail');
    expect(run.line(c.unroutable)).toMatch(/1 of type pdf returned unroutable, oldest created 3m ago/);
    expect(run.stdout).toContain('deploy relays and workers that know these types before the api');
    expect(run.code).toBe(1);
    await database.db.deleteFrom('outbox').where('task_id', '=', id).execute();
    await database.db.deleteFrom('tasks').where('id', '=', id).execute();
    expect((await doctor()).status(c.unroutable)).toBe('ok');
  });

  it('fails "publishes refused by the broker" while the broker nacks a task\'s publishes, naming it and the error', async () => {
    // A full queue that rejects publishes, bound to flaky tasks only: the broker nacks each of their publishes.
    const connection = await amqp.connect(amqpUrl());
    const ch = await connection.createChannel();
    const full = `${prefix}full`;
    try {
      await ch.assertQueue(full, { arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
      await ch.bindQueue(full, amqpNames(prefix).exchange, 'flaky');
      const id = await submit('flaky', { failTimes: 0 });
      await waitFor('three refused publishes recorded', async () => {
        const row = await database.db
          .selectFrom('outbox')
          .select(['last_error', 'publish_attempts'])
          .where('task_id', '=', id)
          .executeTakeFirst();
        return row?.last_error?.startsWith('nacked by broker') === true && row.publish_attempts >= 3;
      });
      expect((await doctor({ DOCTOR_PENDING_MS: '600000' })).status(c.refused)).toBe('ok');
      await sql`UPDATE outbox SET created_at = now() - interval '3 minutes' WHERE task_id = ${id}`.execute(database.db);
      const run = await doctor();
      expect(run.status(c.refused)).toBe('fail');
      expect(run.line(c.refused)).toMatch(
        new RegExp(`1 refused, oldest created 3m ago \\(task ${id}: nacked by broker`),
      );
      expect(run.stdout).toContain('a full queue that rejects publishes');
      expect(run.status(c.unroutable)).toBe('ok');
      expect(run.code).toBe(1);

      await ch.deleteQueue(full);
      // The nacked publishes reached the tasks queue all the same, so the task ran; its row is marked
      // published once the broker confirms one of its retries.
      await waitFor(
        'the row published once the broker takes it',
        async () => {
          const row = await database.db
            .selectFrom('outbox')
            .select('published_at')
            .where('task_id', '=', id)
            .executeTakeFirst();
          return row?.published_at !== null;
        },
        30_000,
      );
      expect(await taskStatus(id)).toBe('succeeded');
      expect((await doctor()).status(c.refused)).toBe('ok');
    } finally {
      await ch.deleteQueue(full).catch(() => undefined);
      await connection.close().catch(() => undefined);
    }
  }, 60_000);

  it('with the broker unreachable, fails "broker reachable", skips the broker checks, keeps the password out and exits 1', async () => {
    const run = await doctor({ AMQP_URL: `amqp://guest:s3cret@127.0.0.1:${await closedPort()}` });
    expect(run.status(c.database)).toBe('ok');
    expect(run.status(c.broker)).toBe('fail');
    expect(run.line(c.broker)).toMatch(/ECONNREFUSED.*start RabbitMQ or fix AMQP_URL/);
    for (const name of [c.topology, c.consumers, c.deadLetters]) {
      expect(run.line(name)).toMatch(/^fail .*not checked/);
    }
    expect(run.status(c.backlog)).toBe('ok');
    expect(run.stdout).not.toContain('s3cret');
    expect(run.code).toBe(1);
  });

  it('with AMQP_URLS, checks through the first node that answers and warns about the ones before it', async () => {
    const down = `amqp://guest:s3cret@127.0.0.1:${await closedPort()}`;
    const run = await doctor({ AMQP_URLS: `${down},${amqpUrl()}` });
    expect(run.status(c.broker)).toBe('warn');
    expect(run.line(c.broker)).toMatch(/ECONNREFUSED.*RabbitMQ at .*start the nodes that do not answer/);
    expect(run.status(c.consumers)).toBe('ok');
    expect(run.stdout).not.toContain('s3cret');
    expect(run.code).toBe(0);
  });

  it('with the database unreachable, fails "database reachable" and skips the database checks', async () => {
    const run = await doctor({ DATABASE_URL: `postgres://postgres:s3cret@127.0.0.1:${await closedPort()}/taskbox` });
    expect(run.status(c.database)).toBe('fail');
    for (const name of [c.migrations, c.backlog, c.pendingUnpublished, c.pendingPublished, c.processing]) {
      expect(run.line(name)).toMatch(/^fail .*not checked/);
    }
    expect(run.status(c.consumers)).toBe('ok');
    expect(run.stdout).not.toContain('s3cret');
    expect(run.code).toBe(1);
  });
});
