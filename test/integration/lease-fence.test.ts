import { sql } from 'kysely';
import type pg from 'pg';
import { createDb, createPool, type Db } from '@taskbox/shared';
import { createLeases, leaseClock, type Leases } from '../../services/worker/src/leases';
import { renewLeases } from '../../services/worker/src/lease-sql';
import { setWorkerSession } from '../../services/worker/src/task-sql';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import { insertTaskFixture } from '../helpers/factories';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { waitFor } from '../helpers/wait';

/** How long, in Postgres's own time, until the task's lease expires (negative: expired; null: no lease). */
async function leaseLeftMs(db: Db, taskId: string): Promise<number | null> {
  const { rows } = await sql<{ ms: number | null }>`
    SELECT (extract(epoch FROM lease_until - now()) * 1000)::float8 AS ms FROM tasks WHERE id = ${taskId}`.execute(db);
  return rows[0]?.ms ?? null;
}

describe('lease renewal over a connection that hangs', () => {
  const leaseMs = 1200;
  let database: TestDatabase;
  let proxy: FaultProxy;
  let pool: pg.Pool;
  let leases: Leases;

  beforeEach(async () => {
    database = await createTestDatabase();
    const target = new URL(database.url);
    proxy = await startFaultProxy(target.hostname, Number(target.port || 5432));
    pool = createPool(proxy.url(database.url), quietLogger, { max: 4, statementTimeoutMs: 10_000 });
    leases = createLeases(createDb(pool), leaseMs, quietLogger);
  });

  afterEach(async () => {
    leases.stop();
    await proxy.restore();
    await pool.end();
    await proxy.close();
    await database.drop();
  });

  it('aborts the run while its lease in Postgres is still valid, holding one connection, not one per tick', async () => {
    const id = await insertTaskFixture(database.db, { status: 'processing', attempts: 1, leaseExpired: true });
    const { logger, lines } = capturingLogger();
    const run = logger.child({ taskId: id, messageId: 'message-1', correlationId: `corr-${id}` });
    const signal = leases.register(id, 1, leaseClock(), 600_000, run);
    leases.start();
    await waitFor('the lease renewed', async () => ((await leaseLeftMs(database.db, id)) ?? 0) > 0);

    proxy.blackhole();
    // Read as the abort happens; null if it only happens after the test gave up and dropped the database.
    const leftAtAbort = new Promise<number | null>((resolve) =>
      signal.addEventListener('abort', () => resolve(leaseLeftMs(database.db, id).catch(() => null))),
    );
    await waitFor('the run aborted', () => signal.aborted, 5000);
    expect(signal.reason).toBe('lost');
    expect(await leftAtAbort).toBeGreaterThan(0);
    expect(pool.totalCount).toBe(1);
    // Said with the run's own ids, as every line about a task.
    expect(lines.find((l) => l.message === 'lease not renewed in time; aborting the run')).toMatchObject({
      taskId: id,
      messageId: 'message-1',
      correlationId: `corr-${id}`,
      attempt: 1,
    });
  });
});

describe('lease renewal and the finish lock tasks in one order', () => {
  let database: TestDatabase;
  let workerPool: pg.Pool;

  beforeAll(async () => {
    database = await createTestDatabase();
    // The worker's own session settings, which decide the plan and so the order rows are locked in.
    workerPool = createPool(database.url, quietLogger, {
      max: 2,
      statementTimeoutMs: 10_000,
      onConnect: setWorkerSession,
    });
  });

  afterAll(async () => {
    await workerPool.end();
    await database.drop();
  });

  it('renews in id order whatever order the runs started in, so it never holds a later task while waiting for an earlier one', async () => {
    const [low, high] = ['00000000-0000-4000-8000-000000000001', 'ffffffff-0000-4000-8000-000000000001'];
    for (const id of [high, low]) await insertTaskFixture(database.db, { id, status: 'processing', attempts: 1 });
    const holder = await database.pool.connect();
    const other = await database.pool.connect();
    try {
      // Another transaction (a finish batch, say) holds the lower task.
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE', [low]);
      // The runs as the worker registered them: the higher task's run started first.
      const runs = [high, low].map((taskId) => ({ taskId, attempt: 1 }));
      const renewal = renewLeases(createDb(workerPool), runs, 15_000);
      await waitFor('the renewal waiting on the lower task', async () => {
        const { rows } = await other.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        return rows[0]!.n === 1;
      });
      // Waiting on the lower one, it holds nothing: the higher task is free to lock.
      await other.query('BEGIN');
      await other.query("SET LOCAL lock_timeout = '100ms'");
      await other.query('SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE', [high]);
      await other.query('COMMIT');
      await holder.query('COMMIT');
      expect((await renewal).map((r) => r.id).sort()).toEqual([low, high]);
    } finally {
      holder.release();
      other.release();
    }
  });
});

describe('leases at shutdown', () => {
  it('aborts a run registered after abortAll at once, with the same reason', () => {
    // No statement runs: a run is only registered and aborted, so no database is needed.
    const leases = createLeases({} as Db, 15_000, quietLogger);
    leases.abortAll('shutdown');
    const signal = leases.register('0b7c1b9e-6c1f-4f39-9a39-1c7d3f6a2b10', 1, leaseClock(), 60_000, quietLogger);
    expect([signal.aborted, signal.reason]).toEqual([true, 'shutdown']);
    leases.unregister('0b7c1b9e-6c1f-4f39-9a39-1c7d3f6a2b10', 1);
  });
});
