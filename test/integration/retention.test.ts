import { sql } from 'kysely';
import { insertOutbox, outboxMessage } from '@taskbox/shared';
import { createRetention } from '../../services/relay/src/retention';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

describe('retention of published outbox rows and finished task attempts', () => {
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
      { outboxMs: HOUR, attemptsMs: 30 * DAY, intervalMs: 50 },
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
});
