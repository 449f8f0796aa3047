import { sql } from 'kysely';
import { TASK_CHANNEL, taskChanged, type TaskRow } from '@taskbox/shared';
import { createTaskEvents, type TaskEvents } from '../../services/api/src/task-events';
import { findTask } from '../../services/api/src/task-sql';
import { createWatcherRegistration } from '../../services/api/src/watcher-registration';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

describe("the api's shared task reads", () => {
  let database: TestDatabase;
  let events: TaskEvents;
  let reads = 0;
  let settled = 0;
  let failNext = false;

  beforeAll(async () => {
    database = await createTestDatabase();
    const reader = async (viewer: { owner: string; admin: boolean }, id: string): Promise<TaskRow | undefined> => {
      reads++;
      try {
        if (failNext) throw new Error('connection terminated');
        return await findTask(database.db, viewer, id);
      } finally {
        settled++;
      }
    };
    events = createTaskEvents(database.url, quietLogger, reader, createWatcherRegistration(database.db, quietLogger), {
      resyncMs: null,
    });
    // Connected before the test: the connect's resync reads every watched task, and a resync landing
    // mid-test would pass for the read of a change.
    const connected = new Promise<void>((resolve) => {
      const off = events.onAnyChange(() => {
        off();
        resolve();
      });
    });
    await events.start();
    await connected;
  });

  afterAll(async () => {
    await events.stop();
    await database.drop();
  });

  async function change(id: string): Promise<void> {
    const before = settled;
    await database.db
      .updateTable('tasks')
      .set({ progress: 0.5, ...taskChanged })
      .where('id', '=', id)
      .execute();
    await sql`SELECT pg_notify(${TASK_CHANNEL}, ${id})`.execute(database.db);
    await waitFor('the shared read', () => settled > before);
  }

  it('keeps a state a watcher has not taken yet when a later read fails: the failure does not hide it', async () => {
    const id = await insertTaskFixture(database.db);
    const watch = events.watch(id);
    try {
      const first = await watch.first({ owner: 'anonymous', admin: false });
      // The watcher is busy (sending the first state) while the task changes and the next read fails.
      await change(id);
      failNext = true;
      await change(id);
      const next = await watch.next(1000, new AbortController().signal);
      expect(Number(next?.row?.version)).toBeGreaterThan(Number(first.row?.version));
      expect(next?.row?.progress).toBe(0.5);
    } finally {
      failNext = false;
      watch.close();
    }
    expect(reads).toBe(3);
  });
});
