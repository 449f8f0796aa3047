import { sql } from 'kysely';
import type { Db } from '@taskbox/shared';
import { retryTask } from '../../services/api/src/retry-sql';
import { cancelTask } from '../../services/api/src/cancel-sql';
import { currentHorizon, tasksChangedSince } from '../../services/api/src/task-sql';
import { renewLeases, sweepExpiredLeases } from '../../services/worker/src/lease-sql';
import { failTask, lockTask, setStep, startPendingAttempts } from '../../services/worker/src/task-sql';
import { finishTerminals, finishWithRetry } from '../../services/worker/src/finish-sql';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';

const ANONYMOUS = { owner: 'anonymous', admin: false };

/**
 * Streams send a state only when its version is newer, and list streams find changed tasks by their
 * transaction: a write that changed a task's view without both would never reach a page.
 */
describe('every write that changes what a task view shows gives the task a new version', () => {
  let database: TestDatabase;
  let db: Db;

  beforeAll(async () => {
    database = await createTestDatabase();
    db = database.db;
  });
  afterAll(async () => {
    await database.drop();
  });

  async function state(id: string): Promise<{ version: number; xid: bigint }> {
    const { rows } = await sql<{ version: string; xid: string }>`
      SELECT version, changed_xid::text AS xid FROM tasks WHERE id = ${id}`.execute(db);
    return { version: Number(rows[0]?.version), xid: BigInt(rows[0]?.xid ?? -1) };
  }

  /** Runs `write` and answers whether it bumped the version and recorded a later transaction. */
  async function bumps(id: string, write: () => Promise<unknown>): Promise<boolean> {
    const before = await state(id);
    await write();
    const after = await state(id);
    return after.version === before.version + 1 && after.xid > before.xid;
  }

  const start = (id: string, attempt: number) =>
    startPendingAttempts(db, [{ taskId: id, type: 'echo', attempt, externalJobId: `job-${id}-${attempt}` }], 60_000);

  it('the worker’s start, step, progress, retry, finish, fail and sweep', async () => {
    const id = await insertTaskFixture(db);
    expect(await bumps(id, () => start(id, 1))).toBe(true);
    expect(await bumps(id, () => setStep(db, id, 1, 'loading'))).toBe(true);
    expect(await bumps(id, () => setStep(db, id, 1, null, 0.5))).toBe(true);
    expect(await bumps(id, () => finishWithRetry(db, id, 1, new Error('boom'), 0))).toBe(true);
    expect(await bumps(id, () => start(id, 2))).toBe(true);
    expect(
      await bumps(id, () => finishTerminals(db, [{ taskId: id, attempt: 2, outcome: { kind: 'cancelled' } }])),
    ).toBe(true);

    const failing = await insertTaskFixture(db, { status: 'processing', attempts: 1 });
    const fail = () =>
      db.transaction().execute(async (tx) => failTask(tx, (await lockTask(tx, failing))!, new Error('x')));
    expect(await bumps(failing, fail)).toBe(true);

    const dead = await insertTaskFixture(db, { status: 'processing', attempts: 1, leaseExpired: true });
    expect(await bumps(dead, () => sweepExpiredLeases(db, 10))).toBe(true);
  });

  it('the api’s cancel, once per request that changes something', async () => {
    const pending = await insertTaskFixture(db);
    expect(await bumps(pending, () => cancelTask(db, ANONYMOUS, pending))).toBe(true);
    const running = await insertTaskFixture(db, { status: 'processing', attempts: 1 });
    expect(await bumps(running, () => cancelTask(db, ANONYMOUS, running))).toBe(true);
    expect(await bumps(running, () => cancelTask(db, ANONYMOUS, running))).toBe(false);
  });

  it('the api’s retry, and not a retry it refuses', async () => {
    const failed = await insertTaskFixture(db, { status: 'failed', attempts: 3 });
    expect(await bumps(failed, () => retryTask(db, ANONYMOUS, failed, null, { traceparent: null }))).toBe(true);
    expect(await bumps(failed, () => retryTask(db, ANONYMOUS, failed, null, { traceparent: null }))).toBe(false);
  });

  it('not a lease renewal, which no view shows', async () => {
    const id = await insertTaskFixture(db, { status: 'processing', attempts: 1 });
    expect(await bumps(id, () => renewLeases(db, [{ taskId: id, attempt: 1 }], 60_000))).toBe(false);
  });

  it('a read from a watermark finds every task changed after it, and the next watermark excludes none still running', async () => {
    const mark = await currentHorizon(db);
    const changed = await insertTaskFixture(db, { owner: 'carol' });
    const open = await db.connection().execute(async (conn) => {
      // A transaction that changed a task and has not committed: a later read must still find it.
      await sql`BEGIN`.execute(conn);
      const late = await insertTaskFixture(conn, { owner: 'carol' });
      const read = await tasksChangedSince(db, ['carol'], mark, null);
      await sql`COMMIT`.execute(conn);
      return { late, read };
    });
    expect(open.read.changed.map((r) => r.id)).toEqual([changed]);
    const next = await tasksChangedSince(db, ['carol'], open.read.horizon, null);
    expect(next.changed.map((r) => r.id)).toContain(open.late);
    // From the first read's edge: the task of the transaction then in progress, and not the one it had.
    const after = await tasksChangedSince(db, ['carol'], open.read.horizon, open.read.edge);
    expect(after.changed.map((r) => r.id)).toEqual([open.late]);
  });

  it("does not read from an edge of another server (a failover, a restart) or ahead of this one's: it reads from the watermark", async () => {
    const mark = await currentHorizon(db);
    const id = await insertTaskFixture(db, { owner: 'erin' });
    const { edge } = await tasksChangedSince(db, ['erin'], mark, null);
    const read = async (after: typeof edge) =>
      (await tasksChangedSince(db, ['erin'], mark, after)).changed.map((r) => r.id);
    expect(await read(edge)).toEqual([]);
    expect(await read({ ...edge, server: 'the server before a failover' })).toEqual([id]);
    expect(await read({ ...edge, xmax: String(BigInt(edge.xmax) + 1000n) })).toEqual([id]);
  });

  it('reads from the last edge only what that read could not see, while an open transaction holds the watermark back', async () => {
    const holder = await database.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      const mark = await currentHorizon(db);
      const a = await insertTaskFixture(db, { owner: 'dave' });
      const first = await tasksChangedSince(db, ['dave'], mark, null);
      expect(first.changed.map((r) => r.id)).toEqual([a]);
      const b = await insertTaskFixture(db, { owner: 'dave' });
      const second = await tasksChangedSince(db, ['dave'], first.horizon, first.edge);
      expect(second.changed.map((r) => r.id)).toEqual([b]);
      // The watermark has not moved: a read from it alone would return the first task again.
      expect(second.horizon).toBe(first.horizon);
      const again = await tasksChangedSince(db, ['dave'], second.horizon, null);
      expect(again.changed.map((r) => r.id).sort()).toEqual([a, b].sort());
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  });
});
