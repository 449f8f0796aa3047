import pg from 'pg';
import { sql } from 'kysely';
import { createTaskNotifier, TASK_CHANNEL, type TaskNotifier } from '@taskbox/shared';
import { createWatcherRegistration } from '../../services/api/src/watcher-registration';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';

describe('the "task changed" NOTIFY goes out only while an api process has a request waiting', () => {
  let database: TestDatabase;
  let listener: pg.Client;
  let notifier: TaskNotifier;
  const heard: string[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    listener = new pg.Client({ connectionString: database.url });
    await listener.connect();
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query(`LISTEN ${TASK_CHANNEL}`);
    notifier = createTaskNotifier(database.pool, quietLogger);
  });

  afterAll(async () => {
    await notifier.stop();
    await listener.end();
    await database.drop();
  });

  /**
   * Announces `id`, then what the listener has heard once a marker sent after it arrives: NOTIFYs reach a
   * listener in commit order, so anything the notifier sent comes before the marker.
   */
  async function announce(id: string): Promise<string[]> {
    heard.length = 0;
    notifier.changed(id);
    await notifier.stop();
    const marker = `marker-${id}`;
    await sql`SELECT pg_notify(${TASK_CHANNEL}, ${marker})`.execute(database.db);
    const deadline = Date.now() + 5000;
    while (!heard.includes(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return heard.filter((p) => p !== marker);
  }

  const rows = async () => (await database.db.selectFrom('task_watchers').selectAll().execute()).length;

  it('sends nothing with nobody waiting, sends while a request holds the registration, and stops once it lapses', async () => {
    const registration = createWatcherRegistration(database.db, quietLogger, { ttlMs: 600 });
    expect(await announce('nobody-waits')).toEqual([]);

    const release = await registration.hold();
    expect(await rows()).toBe(1);
    expect(await announce('one-waits')).toEqual(['one-waits']);
    // Held past its first time to live: the refresh keeps it fresh.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await announce('still-waits')).toEqual(['still-waits']);

    release();
    await new Promise((r) => setTimeout(r, 800));
    expect(await announce('lapsed')).toEqual([]);

    await registration.stop();
    expect(await rows()).toBe(0);
  });

  it('a hold that cannot register fails, so the waiter is answered with an error instead of waiting unannounced', async () => {
    const registration = createWatcherRegistration(database.db, quietLogger);
    await sql`ALTER TABLE task_watchers RENAME TO task_watchers_away`.execute(database.db);
    try {
      await expect(registration.hold()).rejects.toThrow(/task_watchers/);
    } finally {
      await sql`ALTER TABLE task_watchers_away RENAME TO task_watchers`.execute(database.db);
    }
    const release = await registration.hold();
    expect(await rows()).toBe(1);
    release();
    await registration.stop();
  });
});
