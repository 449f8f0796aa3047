import { sql } from 'kysely';
import type pg from 'pg';
import { createDb, createPool, type Db } from '@taskbox/shared';
import { createLeases, leaseClock, type Leases } from '../../services/worker/src/leases';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
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
    const signal = leases.register(id, 1, leaseClock(), 600_000);
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
  });
});
