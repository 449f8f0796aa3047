import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type pg from 'pg';
import { createDb, createPool, insertTasks, prepared, type Db, type PoolOptions } from '@taskbox/shared';
import { finishTerminals } from '../../services/worker/src/finish-sql';
import { setWorkerSession, startPendingAttempts } from '../../services/worker/src/task-sql';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';

interface PreparedRow {
  name: string;
  generic_plans: string;
  custom_plans: string;
}

// Prepared statements belong to a connection, so each test works on a pool of one.
describe('statements prepared once per connection', () => {
  let database: TestDatabase;
  let pool: pg.Pool;
  let db: Db;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterEach(async () => {
    await db.destroy();
  });
  afterAll(async () => {
    await database.drop();
  });

  const connect = (onConnect?: PoolOptions['onConnect']) => {
    pool = createPool(database.url, quietLogger, { max: 1, statementTimeoutMs: 10_000, onConnect });
    db = createDb(pool);
  };
  /** This connection's prepared statements: how often each was planned for its parameters (custom) or not. */
  const preparedStatements = async () => {
    const { rows } = await pool.query<PreparedRow>(
      'SELECT name, generic_plans, custom_plans FROM pg_prepared_statements ORDER BY name',
    );
    return rows.map((r) => ({ name: r.name, custom: Number(r.custom_plans), generic: Number(r.generic_plans) }));
  };

  it('sends a statement marked prepared() under its name, in a transaction too, and any other unnamed', async () => {
    connect();
    const probe = (n: number) => sql<{ n: number }>`${prepared('probe')} SELECT ${n}::int AS n`;
    expect((await probe(1).execute(db)).rows).toEqual([{ n: 1 }]);
    await db.transaction().execute((trx) => probe(2).execute(trx));
    await sql`SELECT ${3}::int AS n`.execute(db);
    const statements = await preparedStatements();
    expect(statements.map((s) => ({ name: s.name, runs: s.custom + s.generic }))).toEqual([{ name: 'probe', runs: 2 }]);
  });

  it('closes a connection whose prepared statement went stale, so that only one statement fails', async () => {
    connect();
    await sql`CREATE TABLE probe (x int)`.execute(database.db);
    await sql`INSERT INTO probe VALUES (1)`.execute(database.db);
    const read = () => sql`${prepared('probe_read')} SELECT * FROM probe`.execute(db);
    expect((await read()).rows).toEqual([{ x: 1 }]);
    // A migration while the services run: the statement's cached plan no longer fits its result type.
    await sql`ALTER TABLE probe ADD COLUMN y int`.execute(database.db);
    await expect(read()).rejects.toMatchObject({ code: '0A000' });
    expect((await read()).rows).toEqual([{ x: 1, y: null }]);
  });

  it("keeps the api's insert on its generic plan once Postgres has settled on one", async () => {
    connect();
    const insertOne = (n: number) => {
      const task = {
        id: randomUUID(),
        type: 'echo',
        payload: { n },
        maxAttempts: 3,
        schedule: null,
        timeoutMs: 60_000,
        owner: 'prepared',
        idempotencyKey: null,
        requestHash: null,
      };
      return insertTasks(db, [{ task, context: { correlationId: null } }]);
    };
    // Postgres tries custom plans for a prepared statement's first runs before it may settle.
    for (let n = 0; n < 10; n++) await insertOne(n);
    const [before] = await preparedStatements();
    for (let n = 10; n < 15; n++) await insertOne(n);
    const [after] = await preparedStatements();
    expect(after?.name).toBe('api_insert_tasks');
    expect({ custom: after!.custom - before!.custom, generic: after!.generic - before!.generic }).toEqual({
      custom: 0,
      generic: 5,
    });
  });

  it("reads only its own rows in the worker's start and finish, though they were planned on an empty table", async () => {
    // No ANALYZE behind the test's back: a new plan would hide the one made on the empty table.
    await sql`ALTER TABLE tasks SET (autovacuum_enabled = false)`.execute(database.db);
    await sql`ALTER TABLE task_attempts SET (autovacuum_enabled = false)`.execute(database.db);
    connect(setWorkerSession);
    const run = async (executor: Db, n: number) => {
      const taskId = await insertTaskFixture(executor);
      await startPendingAttempts(executor, [{ taskId, type: 'echo', attempt: 1, externalJobId: `e:${n}` }], 60_000);
      await finishTerminals(executor, [{ taskId, attempt: 1, outcome: { kind: 'succeeded', resultJson: String(n) } }]);
    };
    await run(db, 0);
    // A day's work later: run and finished tasks, and a backlog waiting.
    await sql`
      WITH t AS (
        INSERT INTO tasks (id, type, payload, status, attempts, owner, finished_at)
        SELECT gen_random_uuid(), 'echo', '{}', CASE WHEN n % 2 = 0 THEN 'succeeded' ELSE 'pending' END,
               CASE WHEN n % 2 = 0 THEN 1 ELSE 0 END, 'prepared', CASE WHEN n % 2 = 0 THEN now() END
        FROM generate_series(1, 4000) AS n
        RETURNING id, attempts
      )
      INSERT INTO task_attempts (task_id, attempt, external_job_id, outcome)
      SELECT id, 1, 'w:' || id, 'succeeded' FROM t WHERE attempts = 1`.execute(database.db);
    const read = await db.transaction().execute(async (tx) => {
      await run(tx, 1);
      const { rows } = await sql<{ relname: string; rows: string }>`
        SELECT relname, (seq_tup_read + coalesce(idx_tup_fetch, 0))::text AS rows
        FROM pg_stat_xact_user_tables WHERE relname IN ('tasks', 'task_attempts') ORDER BY relname`.execute(tx);
      return rows.map((r) => [r.relname, Number(r.rows)]);
    });
    // Key lookups, each row version once: 11 and 2 rows. Planned on the empty table without the worker's
    // settings, the same task read 6 010 rows of tasks and 2 003 of task_attempts.
    expect(read).toEqual([
      ['task_attempts', expect.any(Number)],
      ['tasks', expect.any(Number)],
    ]);
    for (const [, rows] of read) expect(rows).toBeLessThan(50);
  });

  it("never has Postgres compile the worker's statements (JIT), though a disabled scan's cost passes its threshold", async () => {
    connect(setWorkerSession);
    const { rows } = await pool.query<{ 'QUERY PLAN': string }>(
      `EXPLAIN SELECT pg_notify('probe', p) FROM unnest(ARRAY['a']) AS p
       WHERE EXISTS (SELECT 1 FROM task_watchers WHERE until > now())`,
    );
    const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
    expect(plan).toMatch(/Seq Scan on task_watchers {2}\(cost=10000000000/);
    expect(plan).not.toMatch(/JIT/);
  });

  it("runs the worker's start and finish on generic plans only, with the worker's session settings", async () => {
    connect(setWorkerSession);
    for (let n = 0; n < 8; n++) {
      const taskId = await insertTaskFixture(db);
      await startPendingAttempts(db, [{ taskId, type: 'echo', attempt: 1, externalJobId: `p:${n}` }], 60_000);
      await finishTerminals(db, [{ taskId, attempt: 1, outcome: { kind: 'succeeded', resultJson: String(n) } }]);
    }
    expect(await preparedStatements()).toEqual([
      { name: 'worker_finish', custom: 0, generic: 8 },
      { name: 'worker_start_pending', custom: 0, generic: 8 },
    ]);
  });
});
