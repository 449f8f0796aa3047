import { sql } from 'kysely';
import { createDb, createPool, type Db } from '@taskbox/shared';
import { createAttemptWrites, type AttemptWrites } from '../../services/worker/src/attempt-writes';
import { renewLeases } from '../../services/worker/src/lease-sql';
import { finishTerminals } from '../../services/worker/src/finish-sql';
import { setStep, setWorkerSession, startPendingAttempts } from '../../services/worker/src/task-sql';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';

// The writes share statements only when more than the batcher's two slots are busy, so each test
// submits many at once; the assertions hold for every delivery whichever statement carried it.
describe('worker writes shared by deliveries in flight together', () => {
  let database: TestDatabase;
  let writes: AttemptWrites;

  beforeAll(async () => {
    database = await createTestDatabase();
    writes = createAttemptWrites(database.db, 60_000, 50);
  });
  afterAll(async () => {
    await database.drop();
  });

  const tasks = (ids: string[]) =>
    database.db.selectFrom('tasks').selectAll().where('id', 'in', ids).orderBy('id').execute();
  const attempts = (ids: string[]) =>
    database.db.selectFrom('task_attempts').selectAll().where('task_id', 'in', ids).execute();

  it('starts each pending task once, with its own delivery as the external job id, even when a duplicate rides along', async () => {
    const ids = await Promise.all(Array.from({ length: 12 }, () => insertTaskFixture(database.db)));
    const starts = ids.map((taskId, n) => ({ taskId, type: 'echo', attempt: 1, externalJobId: `tag:${n}` }));
    const duplicate = { ...starts[5]!, externalJobId: 'tag:dup' };
    const results = await Promise.all([...starts, duplicate].map((s) => writes.startPending(s)));

    // Postgres lets one of the two deliveries of task 5 win; the other answers undefined.
    const [first, second] = [results[5], results[12]];
    expect([first, second].filter((r) => r !== undefined)).toHaveLength(1);
    const winner = first ? starts[5]! : duplicate;
    const won = starts.map((s, n) => (n === 5 ? winner : s));
    expect(results.filter((r) => r !== undefined).map((r) => r?.attempt)).toEqual(Array(12).fill(1));
    const rows = await tasks(ids);
    expect(rows.every((t) => t.status === 'processing' && t.attempts === 1)).toBe(true);
    const recorded = await attempts(ids);
    expect(recorded).toHaveLength(12);
    for (const start of won) {
      expect(rows.find((t) => t.id === start.taskId)?.external_job_id).toBe(start.externalJobId);
      expect(recorded.find((a) => a.task_id === start.taskId)?.external_job_id).toBe(start.externalJobId);
    }
  });

  it('does not start a task that is not pending or whose message asks for an attempt already started', async () => {
    const running = await insertTaskFixture(database.db, { status: 'processing', attempts: 1 });
    const done = await insertTaskFixture(database.db, { status: 'succeeded', attempts: 1 });
    const retried = await insertTaskFixture(database.db, { status: 'pending', attempts: 1 });
    const results = await Promise.all([
      writes.startPending({ taskId: running, type: 'echo', attempt: 1, externalJobId: 'a:1' }),
      writes.startPending({ taskId: done, type: 'echo', attempt: 1, externalJobId: 'a:2' }),
      writes.startPending({ taskId: retried, type: 'echo', attempt: 1, externalJobId: 'a:3' }),
      writes.startPending({ taskId: retried, type: 'sleep', attempt: 2, externalJobId: 'a:4' }),
    ]);
    expect(results).toEqual([undefined, undefined, undefined, undefined]);
    expect(await attempts([running, done, retried])).toHaveLength(0);
  });

  it('records each outcome, fails only the one whose result Postgres refuses, and writes nothing for a stale attempt', async () => {
    const ids = await Promise.all(
      Array.from({ length: 10 }, () => insertTaskFixture(database.db, { status: 'pending' })),
    );
    await Promise.all(
      ids.map((taskId, n) => writes.startPending({ taskId, type: 'echo', attempt: 1, externalJobId: `f:${n}` })),
    );
    const outcome = (n: number) =>
      n === 7
        ? { kind: 'succeeded' as const, resultJson: JSON.stringify({ text: '\u0000' }) } // jsonb refuses NUL (SQLSTATE 22P05)
        : n === 8
          ? { kind: 'failed' as const, error: new Error('boom'), retryInMs: null }
          : { kind: 'succeeded' as const, resultJson: JSON.stringify({ n }) };
    const finishes = ids.map((id, n) => writes.finish(id, n === 9 ? 2 : 1, outcome(n)));
    const settled = await Promise.allSettled(finishes);

    expect(settled.map((s) => (s.status === 'fulfilled' ? s.value : 'rejected'))).toEqual([
      ...Array(7).fill('succeeded'),
      'rejected',
      'failed',
      null,
    ]);
    expect((settled[7] as PromiseRejectedResult).reason).toMatchObject({ code: '22P05' });
    const rows = await tasks(ids);
    const byId = (id: string) => rows.find((t) => t.id === id);
    ids.slice(0, 7).forEach((id, n) => expect(byId(id)).toMatchObject({ status: 'succeeded', result: { n } }));
    expect(byId(ids[7]!)).toMatchObject({ status: 'processing', result: null });
    expect(byId(ids[8]!)).toMatchObject({ status: 'failed', error: { message: 'boom' } });
    expect(byId(ids[9]!)).toMatchObject({ status: 'processing' });
    const outcomes = await attempts(ids);
    expect(ids.map((id) => outcomes.find((a) => a.task_id === id)?.outcome ?? null)).toEqual([
      ...Array(7).fill('succeeded'),
      null,
      'failed',
      null,
    ]);
  });

  it('stores many large results that finish together, each within the statement timeout that one statement for all of them would pass', async () => {
    const pool = createPool(database.url, quietLogger, { max: 10, statementTimeoutMs: 1000 });
    const tight = createDb(pool);
    try {
      const ids = await Promise.all(Array.from({ length: 20 }, () => insertTaskFixture(database.db)));
      const timed = createAttemptWrites(tight, 60_000, 50);
      await Promise.all(
        ids.map((taskId, n) => timed.startPending({ taskId, type: 'echo', attempt: 1, externalJobId: `l:${n}` })),
      );
      // About 2 MB of JSON each, under WORKER_RESULT_MAX_BYTES: 40 MB in one statement.
      const result = (n: number) => JSON.stringify({ n, rows: Array.from({ length: 250_000 }, (_, i) => i * 1.5) });
      const statuses = await Promise.all(
        ids.map((id, n) => timed.finish(id, 1, { kind: 'succeeded', resultJson: result(n) })),
      );
      expect(statuses).toEqual(Array(20).fill('succeeded'));
      const stored = await sql<{
        n: number;
      }>`SELECT (result->>'n')::int AS n FROM tasks WHERE id = ANY(${ids}::uuid[])`.execute(database.db);
      expect(stored.rows.map((r) => r.n).sort((a, b) => a - b)).toEqual(ids.map((_, n) => n));
    } finally {
      await tight.destroy();
    }
  });

  it("keeps a retry backoff past 2^31 ms (a type's backoff of weeks), scheduling the retry that far ahead", async () => {
    const id = await insertTaskFixture(database.db, { type: 'flaky', status: 'pending', maxAttempts: 3 });
    await writes.startPending({ taskId: id, type: 'flaky', attempt: 1, externalJobId: 'long:1' });
    const weeks = 4 * 7 * 86_400_000; // 2 419 200 000 ms, past int4
    expect(await writes.finish(id, 1, { kind: 'failed', error: new Error('later'), retryInMs: weeks })).toBe('pending');
    const row = await database.db
      .selectFrom('outbox')
      .select('available_at')
      .where('task_id', '=', id)
      .executeTakeFirstOrThrow();
    expect(row.available_at.getTime() - Date.now()).toBeGreaterThan(weeks - 60_000);
    expect(await attempts([id])).toMatchObject([{ attempt: 1, outcome: 'failed' }]);
  });

  it('records a batch of outcomes in one statement: succeeded, failed, cancelled, and nothing for a stale attempt', async () => {
    const ids = await Promise.all(Array.from({ length: 8 }, () => insertTaskFixture(database.db)));
    await Promise.all(
      ids.map((taskId, n) => writes.startPending({ taskId, type: 'echo', attempt: 1, externalJobId: `b:${n}` })),
    );
    const outcome = (n: number) =>
      n === 4
        ? { kind: 'failed' as const, error: new Error('no retries left'), retryInMs: null }
        : n === 5
          ? { kind: 'cancelled' as const }
          : { kind: 'succeeded' as const, resultJson: JSON.stringify({ n }) };
    // The first two take the writer's two slots; the other six (one stale) share a statement.
    const statuses = await Promise.all(ids.map((id, n) => writes.finish(id, n === 6 ? 2 : 1, outcome(n))));

    const expected = ['succeeded', 'succeeded', 'succeeded', 'succeeded', 'failed', 'cancelled', null, 'succeeded'];
    expect(statuses).toEqual(expected);
    const rows = await tasks(ids);
    const byId = (id: string) => rows.find((t) => t.id === id);
    for (const n of [0, 1, 2, 3, 7])
      expect(byId(ids[n]!)).toMatchObject({ status: 'succeeded', result: { n }, progress: 1 });
    expect(byId(ids[4]!)).toMatchObject({ status: 'failed', error: { message: 'no retries left' }, result: null });
    expect(byId(ids[5]!)).toMatchObject({ status: 'cancelled', error: null });
    expect(byId(ids[6]!)).toMatchObject({ status: 'processing', finished_at: null });
    const outcomes = await attempts(ids);
    expect(ids.map((id) => outcomes.find((a) => a.task_id === id)?.outcome ?? null)).toEqual(expected);
  });

  it("never lets an abandoned run's late outcome overwrite a newer attempt, running or finished", async () => {
    const id = await insertTaskFixture(database.db, { type: 'sleep' });
    await writes.startPending({ taskId: id, type: 'sleep', attempt: 1, externalJobId: 'late:1' });
    // Attempt 1 timed out and was abandoned: recorded as failed, with a retry.
    const timedOut = { kind: 'failed' as const, error: new Error('timeout'), retryInMs: 0 };
    expect(await writes.finish(id, 1, timedOut)).toBe('pending');
    await writes.startPending({ taskId: id, type: 'sleep', attempt: 2, externalJobId: 'late:2' });
    const late = { kind: 'succeeded' as const, resultJson: JSON.stringify({ late: true }) };

    expect(await writes.finish(id, 1, late)).toBeNull();
    expect(await writes.finish(id, 1, { ...timedOut, retryInMs: 0 })).toBeNull();
    await setStep(database.db, id, 1, 'written by the orphan', 0.5);
    expect(await tasks([id])).toMatchObject([{ status: 'processing', attempts: 2, result: null, current_step: null }]);

    expect(await writes.finish(id, 2, { kind: 'succeeded', resultJson: JSON.stringify({ attempt: 2 }) })).toBe(
      'succeeded',
    );
    expect(await writes.finish(id, 1, late)).toBeNull();
    expect(await tasks([id])).toMatchObject([{ status: 'succeeded', attempts: 2, result: { attempt: 2 } }]);
    const rows = await attempts([id]);
    expect(rows.sort((a, b) => a.attempt - b.attempt).map((a) => [a.attempt, a.outcome])).toEqual([
      [1, 'failed'],
      [2, 'succeeded'],
    ]);
  });
});

// A worker's cost per task must not grow with the tasks it has already run. The planner's picture here
// is the one that broke these statements: many finished tasks, statistics taken while none ran (and
// kept: autovacuum is off), then thousands running. The worker's own session settings apply.
describe('worker writes on a large tasks table', () => {
  let database: TestDatabase;
  let db: Db;

  beforeAll(async () => {
    database = await createTestDatabase();
    const setup = database.db;
    await sql`ALTER TABLE tasks SET (autovacuum_enabled = off)`.execute(setup);
    await sql`
      INSERT INTO tasks (id, type, payload, owner, status, attempts)
      SELECT gen_random_uuid(), 'echo', '{}', 'bulk', 'succeeded', 1 FROM generate_series(1, 20000)`.execute(setup);
    await sql`INSERT INTO task_attempts (task_id, attempt, external_job_id) SELECT id, 1, 'bulk' FROM tasks`.execute(
      setup,
    );
    await sql`ANALYZE tasks, task_attempts`.execute(setup);
    await sql`
      UPDATE tasks SET status = 'processing', lease_until = now() + interval '1 minute'
      WHERE id IN (SELECT id FROM tasks LIMIT 3000)`.execute(setup);
    db = createDb(
      createPool(database.url, quietLogger, { max: 1, statementTimeoutMs: 10_000, onConnect: setWorkerSession }),
    );
  });
  afterAll(async () => {
    await db.destroy();
    await database.drop();
  });

  it('finds each task by primary key when it starts, renews, reports progress and finishes an attempt', async () => {
    const ids = await Promise.all([insertTaskFixture(db), insertTaskFixture(db)]);
    const scans = await db.transaction().execute(async (trx) => {
      const starts = ids.map((taskId, n) => ({ taskId, type: 'echo', attempt: 1, externalJobId: `big:${n}` }));
      const started = await startPendingAttempts(trx, starts, 60_000);
      const renewed = await renewLeases(
        trx,
        ids.map((taskId) => ({ taskId, attempt: 1 })),
        60_000,
      );
      await setStep(trx, ids[0]!, 1, 'halfway', 0.5);
      const succeeded = { kind: 'succeeded' as const, resultJson: 'null' };
      const finished = await finishTerminals(
        trx,
        ids.map((taskId) => ({ taskId, attempt: 1, outcome: succeeded })),
      );
      const { rows } = await sql<{ tasks: string; attempts: string; lease: string }>`
        SELECT pg_stat_get_xact_numscans('tasks'::regclass) AS tasks,
               pg_stat_get_xact_numscans('task_attempts'::regclass) AS attempts,
               pg_stat_get_xact_numscans('tasks_lease'::regclass) AS lease`.execute(trx);
      return { started: started.map((s) => s?.attempt), renewed: renewed.length, finished, ...rows[0] };
    });
    expect(scans).toEqual({
      started: [1, 1],
      renewed: 2,
      finished: ['succeeded', 'succeeded'],
      tasks: '0',
      attempts: '0',
      lease: '0',
    });
  });
});
