import { sql } from 'kysely';
import request from 'supertest';
import { insertOutbox, outboxMessage, type TaskStatus } from '@taskbox/shared';
import { createRetention, RETENTION_LOCK } from '../../services/relay/src/retention';
import { startTestApi } from '../helpers/api';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

describe('retention of published outbox rows, finished attempts and finished tasks', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });

  afterAll(async () => {
    await database.drop();
  });

  /** An outbox row for `taskId`, created `ageMs` ago, published then (or never). */
  async function outboxRow(taskId: string, ageMs: number, published: boolean): Promise<string> {
    const message = outboxMessage({ id: taskId, type: 'echo' }, 1, { correlationId: null });
    await insertOutbox(database.db, [message]);
    const at = sql<Date>`now() - ${ageMs} * interval '1 millisecond'`;
    await database.db
      .updateTable('outbox')
      .set({ created_at: at, available_at: at, ...(published ? { published_at: at } : {}) })
      .where('message_id', '=', message.message_id)
      .execute();
    return message.message_id;
  }

  async function attempt(taskId: string, n: number, startedAgoMs: number, finishedAgoMs: number | null) {
    const ago = (ms: number) => sql<Date>`now() - ${ms} * interval '1 millisecond'`;
    await database.db
      .insertInto('task_attempts')
      .values({
        task_id: taskId,
        attempt: n,
        external_job_id: `worker-test:${n}`,
        started_at: ago(startedAgoMs),
        finished_at: finishedAgoMs === null ? null : ago(finishedAgoMs),
        outcome: finishedAgoMs === null ? null : 'failed',
      })
      .execute();
  }

  it('on its schedule, deletes old published rows in batches and old finished attempts, and keeps unpublished rows, recent rows and unfinished attempts', async () => {
    const taskId = await insertTaskFixture(database.db, { status: 'processing', attempts: 4 });
    // More than one delete batch (1 000) of old published rows, so the sweep must loop.
    await sql`
      INSERT INTO outbox (message_id, task_id, routing_key, payload, created_at, published_at)
      SELECT gen_random_uuid(), ${taskId}, 'echo', '{}', now() - interval '2 hours', now() - interval '2 hours'
      FROM generate_series(1, 2500)`.execute(database.db);
    const recentPublished = await outboxRow(taskId, 60_000, true);
    const oldUnpublished = await outboxRow(taskId, 10 * DAY, false);
    await attempt(taskId, 1, 41 * DAY, 40 * DAY);
    await attempt(taskId, 2, 2 * DAY, DAY);
    await attempt(taskId, 3, 40 * DAY, 39 * DAY);
    await attempt(taskId, 4, 40 * DAY, null);

    const retention = createRetention(
      database.db,
      database.pool,
      { outboxMs: HOUR, attemptsMs: 30 * DAY, tasksMs: 365 * DAY, intervalMs: 50 },
      quietLogger,
    );
    retention.start();
    try {
      await waitFor('the old rows to be deleted', async () => {
        const left = await database.db.selectFrom('outbox').select('message_id').execute();
        const attempts = await database.db.selectFrom('task_attempts').select('attempt').execute();
        return left.length === 2 && attempts.length === 2;
      });
    } finally {
      await retention.stop();
    }

    const left = await database.db.selectFrom('outbox').select('message_id').orderBy('id').execute();
    expect(left.map((r) => r.message_id).sort()).toEqual([recentPublished, oldUnpublished].sort());
    const attempts = await database.db.selectFrom('task_attempts').select('attempt').orderBy('attempt').execute();
    expect(attempts.map((a) => a.attempt)).toEqual([2, 4]);
  });

  /** A task in `status` that finished (or, for pending and processing, was created) `ageMs` ago. */
  async function agedTask(status: TaskStatus, ageMs: number): Promise<string> {
    const id = await insertTaskFixture(database.db, { status, attempts: status === 'pending' ? 0 : 1 });
    const at = sql<Date>`now() - ${ageMs} * interval '1 millisecond'`;
    const finished = ['succeeded', 'failed', 'cancelled'].includes(status);
    await database.db
      .updateTable('tasks')
      .set({ created_at: at, updated_at: at, ...(finished ? { finished_at: at } : {}) })
      .where('id', '=', id)
      .execute();
    if (status !== 'pending') await attempt(id, 1, ageMs + 1000, finished ? ageMs : null);
    return id;
  }

  const retentionFor = (tasksMs: number) =>
    createRetention(
      database.db,
      database.pool,
      { outboxMs: HOUR, attemptsMs: 365 * DAY, tasksMs, intervalMs: 60_000 },
      quietLogger,
    );

  it('deletes tasks finished longer ago than the retention with their attempts, and never a pending or processing task', async () => {
    const old = await Promise.all(
      (['succeeded', 'failed', 'cancelled'] as const).map((status) => agedTask(status, 31 * DAY)),
    );
    const kept = await Promise.all([
      agedTask('succeeded', 29 * DAY),
      agedTask('pending', 400 * DAY),
      agedTask('processing', 400 * DAY),
    ]);
    await retentionFor(30 * DAY).sweep();

    const left = await database.db
      .selectFrom('tasks')
      .select('id')
      .where('id', 'in', [...old, ...kept])
      .execute();
    expect(left.map((r) => r.id).sort()).toEqual([...kept].sort());
    const attemptsOfOld = await database.db
      .selectFrom('task_attempts')
      .select('task_id')
      .where('task_id', 'in', old)
      .execute();
    expect(attemptsOfOld).toEqual([]);
  });

  it('sweeps only while no other relay holds the retention lock', async () => {
    const id = await agedTask('succeeded', 31 * DAY);
    const other = await database.pool.connect();
    try {
      await other.query('SELECT pg_advisory_lock($1)', [RETENTION_LOCK]);
      await retentionFor(30 * DAY).sweep();
      expect(await database.db.selectFrom('tasks').select('id').where('id', '=', id).execute()).toHaveLength(1);
      await other.query('SELECT pg_advisory_unlock($1)', [RETENTION_LOCK]);
      await retentionFor(30 * DAY).sweep();
      expect(await database.db.selectFrom('tasks').select('id').where('id', '=', id).execute()).toHaveLength(0);
    } finally {
      other.release();
    }
  });

  it('deletes 100 000 finished tasks in batches while the api goes on accepting tasks', async () => {
    const api = await startTestApi();
    try {
      await sql`
        INSERT INTO tasks (id, type, payload, status, attempts, owner, created_at, updated_at, finished_at)
        SELECT gen_random_uuid(), 'echo', '{}', 'succeeded', 1, 'old', now() - interval '40 days',
               now() - interval '40 days', now() - interval '40 days'
        FROM generate_series(1, 100000)`.execute(api.database.db);
      const retention = createRetention(
        api.database.db,
        api.database.pool,
        { outboxMs: HOUR, attemptsMs: 365 * DAY, tasksMs: 30 * DAY, intervalMs: 60_000 },
        quietLogger,
      );
      let sweeping = true;
      const swept = retention.sweep().finally(() => (sweeping = false));
      const latencies: number[] = [];
      while (sweeping) {
        const started = performance.now();
        const res = await request(api.app).post('/tasks').send({ type: 'echo', payload: {} });
        expect(res.status).toBe(202);
        latencies.push(performance.now() - started);
      }
      await swept;
      const old = await api.database.db.selectFrom('tasks').select('id').where('owner', '=', 'old').limit(1).execute();
      expect(old).toEqual([]);
      latencies.sort((a, b) => a - b);
      const p = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!.toFixed(1);
      console.log(`100 000-task retention: ${latencies.length} POSTs meanwhile, p50 ${p(0.5)} ms, p99 ${p(0.99)} ms`);
      expect(latencies.length).toBeGreaterThan(0);
    } finally {
      await api.close();
    }
  }, 120_000);
});
